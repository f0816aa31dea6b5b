// The NPC's voice on its way in: an engine's float audio (any rate, any channel count) made into mono int16
// at the session's rate and pushed in whole chunks (20 ms by default, one Opus packet of the core's), so an
// audio callback makes a few P/Invoke calls with a reused buffer rather than one per callback size.
using System;
using AvatarBackend.Client.Native;

namespace AvatarBackend.Client
{
    /// <summary>Downmixes, resamples (linear, continuous across calls) and cuts voice into chunks. One writer
    /// thread at a time; no allocation after construction.</summary>
    public sealed class VoiceChunker
    {
        readonly short[] chunk;
        int filled;
        int sourceSampleRate;
        double phase;              // where the next output sample falls, in input samples of the current block
        float previous;            // the last input sample of the previous block (index -1 of the current one)

        public VoiceChunker(int sessionSampleRate, int chunkMilliseconds = 20)
        {
            if (sessionSampleRate <= 0)
                throw new ArgumentOutOfRangeException("sessionSampleRate");
            if (chunkMilliseconds <= 0)
                throw new ArgumentOutOfRangeException("chunkMilliseconds");
            SessionSampleRate = sessionSampleRate;
            chunk = new short[sessionSampleRate * chunkMilliseconds / 1000];
        }

        public int SessionSampleRate { get; private set; }
        /// <summary>Samples per pushed chunk (960 for 20 ms at 48 kHz).</summary>
        public int ChunkSamples { get { return chunk.Length; } }
        /// <summary>Session-rate samples produced so far (pushed or waiting in the partial chunk).</summary>
        public long SamplesProduced { get; private set; }
        /// <summary>The result of the latest push that did not succeed (Ok when all did).</summary>
        public AvatarResult LastPushResult { get; private set; }

        /// <summary>Adds <paramref name="frames"/> frames of interleaved audio from
        /// <paramref name="interleaved"/>[offset..] and pushes every chunk that fills up.</summary>
        public void Write(float[] interleaved, int offset, int frames, int channels, int sampleRate, IVoiceSink sink)
        {
            if (channels <= 0 || sampleRate <= 0)
                throw new ArgumentOutOfRangeException(channels <= 0 ? "channels" : "sampleRate");
            if (frames <= 0)
                return;
            if (sampleRate != sourceSampleRate)
            {
                // A new source: its first sample starts the stream again.
                sourceSampleRate = sampleRate;
                phase = 0;
                previous = 0;
            }
            double step = (double)sampleRate / SessionSampleRate;
            int last = frames - 1;
            while (phase <= last)
            {
                int index = (int)Math.Floor(phase);
                double weight = phase - index;
                float a = index < 0 ? previous : Mono(interleaved, offset, index, channels);
                float b = weight == 0 ? a : Mono(interleaved, offset, index + 1, channels);
                Emit(a + (float)((b - a) * weight), sink);
                phase += step;
            }
            phase -= frames;
            previous = Mono(interleaved, offset, last, channels);
        }

        /// <summary>Pushes the partial chunk (the end of an utterance).</summary>
        public void Flush(IVoiceSink sink)
        {
            if (filled > 0)
                Push(sink, filled);
        }

        /// <summary>Forgets the partial chunk and the resampler's state (a new voice source).</summary>
        public void Reset()
        {
            filled = 0;
            sourceSampleRate = 0;
            phase = 0;
            previous = 0;
        }

        static float Mono(float[] interleaved, int offset, int frame, int channels)
        {
            int at = offset + frame * channels;
            if (channels == 1)
                return interleaved[at];
            float sum = 0;
            for (int c = 0; c < channels; c++)
                sum += interleaved[at + c];
            return sum / channels;
        }

        void Emit(float value, IVoiceSink sink)
        {
            if (value > 1f) value = 1f;
            else if (value < -1f) value = -1f;
            chunk[filled++] = (short)Math.Round(value * 32767f);
            SamplesProduced++;
            if (filled == chunk.Length)
                Push(sink, filled);
        }

        void Push(IVoiceSink sink, int sampleCount)
        {
            AvatarResult result = sink.PushPcm(chunk, sampleCount);
            if (result != AvatarResult.Ok)
                LastPushResult = result;
            filled = 0;
        }
    }
}
