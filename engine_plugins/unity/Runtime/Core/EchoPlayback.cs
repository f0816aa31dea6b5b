// Playback of the echoed voice and the A/V clock built on it.
//
// The frames follow the echoed voice exactly, so the echoed voice is the clock: the audio thread plays it
// (resampled from the session's rate to the output's) and counts what it played; the main thread subtracts
// what is still in the output's buffers (what the player has not heard yet), reports that position to the
// core (avb_session_playback_progress, used for interrupts) and shows the newest frame whose pts has
// come due (avb_session_poll_due_frame). When the echoed voice runs out, playback holds its position, so the
// picture waits for the sound instead of running ahead of it.
using System;

namespace AvatarBackend.Client
{
    /// <summary>A ring of echoed voice on the session clock: filled by the thread that polls the session,
    /// drained by the audio thread. Short locks only; no allocation after construction.</summary>
    public sealed class EchoPlayback
    {
        readonly object gate = new object();
        readonly short[] ring;
        int readIndex;
        int count;
        ulong readPosition;        // session-clock position of ring[readIndex]: what has been played so far
        double fraction;           // how far playback is between ring[readIndex] and the next sample
        bool started;

        /// <param name="sessionSampleRate">The session clock's rate (the echoed voice's rate).</param>
        /// <param name="capacitySeconds">How much echoed voice may wait to be played.</param>
        public EchoPlayback(int sessionSampleRate, double capacitySeconds = 10)
        {
            if (sessionSampleRate <= 0)
                throw new ArgumentOutOfRangeException("sessionSampleRate");
            SessionSampleRate = sessionSampleRate;
            ring = new short[Math.Max(1, (int)(sessionSampleRate * capacitySeconds))];
        }

        public int SessionSampleRate { get; private set; }
        public int Capacity { get { return ring.Length; } }

        /// <summary>The session-clock position up to which the echoed voice has been handed to the output.</summary>
        public ulong PlayedUntil { get { lock (gate) return readPosition; } }

        /// <summary>Echoed voice waiting to be played, in session samples.</summary>
        public int BufferedSamples { get { lock (gate) return count; } }

        /// <summary>Echoed voice that was dropped because the ring was full (the reader fell behind).</summary>
        public long OverflowSamples { get; private set; }

        /// <summary>Adds echoed voice that starts at <paramref name="start"/> on the session clock. Voice that
        /// overlaps what is buffered replaces it (the core's answer to an interrupt); voice already played is
        /// skipped; a gap (the stream jumped ahead) is played as silence.</summary>
        public void Enqueue(short[] samples, int sampleCount, ulong start)
        {
            lock (gate)
            {
                if (!started || (count == 0 && start > readPosition))
                {
                    // Nothing is waiting: playback starts where this voice does.
                    started = true;
                    readPosition = Math.Max(readPosition, start);
                    fraction = 0;
                }
                ulong bufferedEnd = readPosition + (ulong)count;
                if (start < bufferedEnd)
                    TruncateLocked(start);
                int skip = 0;
                if (start < readPosition)
                {
                    ulong played = readPosition - start;
                    skip = played >= (ulong)sampleCount ? sampleCount : (int)played;
                }
                else if (start > bufferedEnd)
                {
                    long gap = (long)Math.Min(start - bufferedEnd, (ulong)ring.Length);
                    for (long i = 0; i < gap; i++)
                        AppendLocked(0);
                }
                for (int i = skip; i < sampleCount; i++)
                    AppendLocked(samples[i]);
            }
        }

        /// <summary>Drops the buffered voice from <paramref name="pts"/> on (an InterruptAck's replace_from_pts).</summary>
        public void DiscardFrom(ulong pts)
        {
            lock (gate)
                TruncateLocked(pts);
        }

        /// <summary>Fills <paramref name="output"/> (interleaved, <paramref name="channels"/> per frame, at
        /// <paramref name="outputSampleRate"/>) with the echoed voice, every channel the same, silence where none
        /// is buffered. Returns the frames that carried voice.</summary>
        public int Read(float[] output, int channels, int outputSampleRate)
        {
            int frames = output.Length / channels;
            double step = (double)SessionSampleRate / outputSampleRate;
            int played = 0;
            lock (gate)
            {
                for (; played < frames && count > 0; played++)
                {
                    short current = ring[readIndex];
                    short next = count > 1 ? ring[(readIndex + 1) % ring.Length] : current;
                    float value = (float)((current + (next - current) * fraction) / 32768.0);
                    int at = played * channels;
                    for (int c = 0; c < channels; c++)
                        output[at + c] = value;
                    fraction += step;
                    while (fraction >= 1 && count > 0)
                    {
                        AdvanceLocked(1);
                        fraction -= 1;
                    }
                }
            }
            Array.Clear(output, played * channels, output.Length - played * channels);
            return played;
        }

        /// <summary>Plays <paramref name="sessionSamples"/> without sound (a silent NPC, no audio output): the
        /// clock advances over what is buffered, never beyond.</summary>
        public int Skip(int sessionSamples)
        {
            lock (gate)
            {
                int skipped = Math.Min(sessionSamples, count);
                AdvanceLocked(skipped);
                return skipped;
            }
        }

        void AdvanceLocked(int samples)
        {
            readIndex = (readIndex + samples) % ring.Length;
            count -= samples;
            readPosition += (ulong)samples;
        }

        void AppendLocked(short sample)
        {
            if (count == ring.Length)
            {
                AdvanceLocked(1);
                OverflowSamples++;
            }
            ring[(readIndex + count) % ring.Length] = sample;
            count++;
        }

        void TruncateLocked(ulong pts)
        {
            if (pts <= readPosition)
                count = 0;
            else if (pts < readPosition + (ulong)count)
                count = (int)(pts - readPosition);
        }
    }

    /// <summary>What the player hears, on the session clock, and how far the shown picture is from it.</summary>
    public sealed class AvClock
    {
        double offsetSumMs;
        int offsetCount;

        public AvClock(int sessionSampleRate)
        {
            if (sessionSampleRate <= 0)
                throw new ArgumentOutOfRangeException("sessionSampleRate");
            SessionSampleRate = sessionSampleRate;
        }

        public int SessionSampleRate { get; private set; }

        /// <summary>Audio handed to the output that the player has not heard yet (the output's buffers), in
        /// seconds. Unity: AudioSettings.GetDSPBufferSize's length * count / AudioSettings.outputSampleRate.</summary>
        public double OutputLatencySeconds { get; set; }

        /// <summary>The playback position: what was played minus what is still in the output's buffers.</summary>
        public ulong HeardUntil(ulong playedUntil)
        {
            ulong latency = (ulong)Math.Round(OutputLatencySeconds * SessionSampleRate);
            return playedUntil > latency ? playedUntil - latency : 0;
        }

        /// <summary>A frame was shown while the player heard <paramref name="heardUntil"/>: records how late
        /// the picture is behind the sound (positive: the frame is late).</summary>
        public void FrameShown(ulong pts, ulong heardUntil)
        {
            offsetSumMs += ((double)heardUntil - pts) * 1000.0 / SessionSampleRate;
            offsetCount++;
        }

        /// <summary>The mean A/V offset of the frames shown since the last call, in milliseconds, and starts a
        /// new window; NaN when none was shown.</summary>
        public double TakeMeanOffsetMs()
        {
            double mean = offsetCount == 0 ? double.NaN : offsetSumMs / offsetCount;
            offsetSumMs = 0;
            offsetCount = 0;
            return mean;
        }
    }

    /// <summary>Events per second over the last second (shown frames for the stats overlay).</summary>
    public sealed class FrameRateMeter
    {
        readonly double[] times = new double[512];
        int next;
        int filled;

        public void Tick(double nowSeconds)
        {
            times[next] = nowSeconds;
            next = (next + 1) % times.Length;
            if (filled < times.Length)
                filled++;
        }

        public double PerSecond(double nowSeconds)
        {
            int recent = 0;
            for (int i = 0; i < filled; i++)
            {
                double age = nowSeconds - times[(next - 1 - i + times.Length) % times.Length];
                if (age > 1.0)
                    break;
                recent++;
            }
            return recent;
        }
    }
}
