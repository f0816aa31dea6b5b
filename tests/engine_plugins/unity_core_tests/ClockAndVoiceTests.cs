// Unit tests of the engine-independent helpers: echoed-voice playback and the A/V clock, voice chunking and
// resampling, the reconnect policy. No native library is loaded.
using System;
using System.Collections.Generic;
using AvatarBackend.Client.Native;

namespace AvatarBackend.Client.Tests
{
    /// <summary>Records what a VoiceChunker pushes.</summary>
    sealed class RecordingSink : IVoiceSink
    {
        public readonly List<int> ChunkSizes = new List<int>();
        public readonly List<short> Samples = new List<short>();
        public AvatarResult Answer = AvatarResult.Ok;

        public AvatarResult PushPcm(short[] samples, int count)
        {
            ChunkSizes.Add(count);
            for (int i = 0; i < count; i++)
                Samples.Add(samples[i]);
            return Answer;
        }
    }

    sealed class CountingSink : IVoiceSink
    {
        public long Samples;

        public AvatarResult PushPcm(short[] samples, int count)
        {
            Samples += count;
            return AvatarResult.Ok;
        }
    }

    public static class AvClockTests
    {
        static short[] Ramp(int count, int first)
        {
            var samples = new short[count];
            for (int i = 0; i < count; i++)
                samples[i] = (short)(first + i);
            return samples;
        }

        public static void PlaysEchoedVoiceAtTheSameRateSampleForSampleAndCountsIt()
        {
            var echo = new EchoPlayback(48000);
            echo.Enqueue(Ramp(100, 1), 100, 4800);
            var output = new float[2 * 60];
            Check.Equal(60, echo.Read(output, 2, 48000), "frames with voice");
            Check.Equal(4860UL, echo.PlayedUntil, "played until: start + played");
            for (int i = 0; i < 60; i++)
            {
                Check.Near((1 + i) / 32768.0, output[2 * i], 1e-7, "left sample " + i);
                Check.Equal(output[2 * i], output[2 * i + 1], "right = left at " + i);
            }
            Check.Equal(40, echo.BufferedSamples, "still buffered");
        }

        public static void UnderrunPlaysSilenceAndHoldsThePosition()
        {
            var echo = new EchoPlayback(16000);
            echo.Enqueue(Ramp(10, 100), 10, 0);
            var output = new float[32];
            for (int i = 0; i < output.Length; i++)
                output[i] = 0.5f;
            Check.Equal(10, echo.Read(output, 1, 16000), "frames with voice");
            for (int i = 10; i < 32; i++)
                Check.Equal(0f, output[i], "silence after the voice at " + i);
            Check.Equal(10UL, echo.PlayedUntil, "the clock waits for the voice");
            echo.Read(output, 1, 16000);
            Check.Equal(10UL, echo.PlayedUntil, "still waiting");
        }

        public static void ResamplesSessionRateToOutputRateAndKeepsTheClockInSessionSamples()
        {
            // 16 kHz echoed voice played at 48 kHz: three output samples per session sample, interpolated.
            var echo = new EchoPlayback(16000);
            echo.Enqueue(new short[] { 0, 300, 600, 900, 1200 }, 5, 0);
            var output = new float[9];
            echo.Read(output, 1, 48000);
            for (int i = 0; i < 9; i++)
                Check.Near(i * 100 / 32768.0, output[i], 1e-6, "interpolated sample " + i);
            Check.Equal(3UL, echo.PlayedUntil, "nine output samples are three session samples");
        }

        public static void DownsamplesToASlowerOutputRate()
        {
            var echo = new EchoPlayback(48000);
            var second = Ramp(48000, 0);
            echo.Enqueue(second, second.Length, 0);
            var output = new float[44100];
            echo.Read(output, 1, 44100);
            Check.Near(48000, (double)echo.PlayedUntil, 1, "one output second plays one session second");
        }

        public static void InterruptDiscardsBufferedVoiceFromTheReplacePoint()
        {
            var echo = new EchoPlayback(48000);
            echo.Enqueue(Ramp(1000, 0), 1000, 0);
            echo.Read(new float[100], 1, 48000);
            echo.DiscardFrom(400);
            Check.Equal(300, echo.BufferedSamples, "voice from 100 to 400 stays");
            // The answer's new audio starts at the replace point and continues the timeline from there.
            echo.Enqueue(Ramp(50, 5000), 50, 400);
            echo.Read(new float[300], 1, 48000);
            var next = new float[1];
            echo.Read(next, 1, 48000);
            Check.Near(5000 / 32768.0, next[0], 1e-6, "the new voice follows the kept voice");
        }

        public static void InterruptSilencesAtOnceAndTheAnswerContinuesTheClock()
        {
            // NpcAvatar.Interrupt drops what the output has not taken; the answer's voice starts at the
            // playback position rounded up to a frame, so the clock moves on to it.
            var echo = new EchoPlayback(48000);
            echo.Enqueue(Ramp(1000, 0), 1000, 0);
            echo.Read(new float[100], 1, 48000);
            echo.DiscardFrom(echo.PlayedUntil);
            var output = new float[10];
            Check.Equal(0, echo.Read(output, 1, 48000), "silent at once");
            Check.Equal(100UL, echo.PlayedUntil, "the clock holds");
            echo.Enqueue(Ramp(50, 7000), 50, 120);
            Check.Equal(120UL, echo.PlayedUntil, "moves on to the replace point");
            echo.Read(output, 1, 48000);
            Check.Near(7000 / 32768.0, output[0], 1e-6, "the answer's voice");
        }

        public static void OverlappingVoiceReplacesTheBufferedTail()
        {
            var echo = new EchoPlayback(48000);
            echo.Enqueue(Ramp(100, 0), 100, 0);
            echo.Enqueue(Ramp(100, 1000), 100, 50);
            Check.Equal(150, echo.BufferedSamples, "50 kept, 100 new");
            var output = new float[150];
            echo.Read(output, 1, 48000);
            Check.Near(49 / 32768.0, output[49], 1e-6, "old voice before the overlap");
            Check.Near(1000 / 32768.0, output[50], 1e-6, "new voice from the overlap on");
        }

        public static void VoiceAlreadyPlayedIsSkippedAndAGapIsSilence()
        {
            var echo = new EchoPlayback(48000);
            echo.Enqueue(Ramp(100, 1), 100, 0);
            echo.Read(new float[80], 1, 48000);
            echo.Enqueue(Ramp(40, 500), 40, 70);   // 70..110: 70..80 was played, 80..100 replaced
            Check.Equal(30, echo.BufferedSamples, "80..110");
            echo.Enqueue(Ramp(10, 900), 10, 120);  // a gap of 10 samples
            Check.Equal(50, echo.BufferedSamples, "80..130 with 110..120 silent");
            var output = new float[50];
            echo.Read(output, 1, 48000);
            Check.Near(510 / 32768.0, output[0], 1e-6, "first unplayed sample of the new voice");
            Check.Equal(0f, output[35], "the gap is silent");
            Check.Near(900 / 32768.0, output[40], 1e-6, "voice after the gap");
            Check.Equal(130UL, echo.PlayedUntil, "position");
        }

        public static void FullRingDropsTheOldestVoiceAndCountsIt()
        {
            var echo = new EchoPlayback(1000, 0.1);
            Check.Equal(100, echo.Capacity, "capacity");
            echo.Enqueue(Ramp(150, 0), 150, 0);
            Check.Equal(100, echo.BufferedSamples, "buffered");
            Check.Equal(50L, echo.OverflowSamples, "overflow");
            Check.Equal(50UL, echo.PlayedUntil, "the dropped voice counts as played");
        }

        public static void SkipAdvancesOverBufferedVoiceOnly()
        {
            var echo = new EchoPlayback(48000);
            echo.Enqueue(Ramp(100, 0), 100, 1000);
            Check.Equal(100, echo.Skip(480), "skipped");
            Check.Equal(1100UL, echo.PlayedUntil, "position");
        }

        public static void HeardUntilSubtractsTheOutputLatency()
        {
            var clock = new AvClock(48000) { OutputLatencySeconds = 0.02 };
            Check.Equal(9040UL, clock.HeardUntil(10000), "20 ms at 48 kHz");
            Check.Equal(0UL, clock.HeardUntil(500), "never below zero");
        }

        public static void AvOffsetIsTheMeanDelayOfShownFrames()
        {
            var clock = new AvClock(48000);
            Check.True(double.IsNaN(clock.TakeMeanOffsetMs()), "NaN before any frame");
            clock.FrameShown(4800, 4800 + 480);
            clock.FrameShown(9600, 9600 + 960);
            Check.Near(15.0, clock.TakeMeanOffsetMs(), 1e-9, "mean of 10 and 20 ms");
            Check.True(double.IsNaN(clock.TakeMeanOffsetMs()), "a new window");
        }

        public static void FrameRateMeterCountsTheLastSecond()
        {
            var meter = new FrameRateMeter();
            for (int i = 0; i < 50; i++)
                meter.Tick(i * 0.04);
            Check.Equal(25.0, meter.PerSecond(1.98), "25 fps");
            Check.Equal(0.0, meter.PerSecond(10), "nothing lately");
        }

        public static void PlaybackAllocatesNothing()
        {
            var echo = new EchoPlayback(48000);
            var voice = Ramp(4800, 0);
            var output = new float[2048];
            Check.AllocatesNothing(() =>
            {
                echo.Enqueue(voice, voice.Length, echo.PlayedUntil + (ulong)echo.BufferedSamples);
                echo.Read(output, 2, 44100);
            }, "Enqueue + Read");
        }
    }

    public static class VoiceChunkerTests
    {
        public static void CutsVoiceInto20MillisecondChunksAtTheSessionRate()
        {
            var sink = new RecordingSink();
            var chunker = new VoiceChunker(48000);
            Check.Equal(960, chunker.ChunkSamples, "20 ms at 48 kHz");
            var block = new float[500];
            for (int i = 0; i < 5; i++)
                chunker.Write(block, 0, block.Length, 1, 48000, sink);
            Check.Equal(2, sink.ChunkSizes.Count, "2500 samples: two whole chunks pushed");
            chunker.Flush(sink);
            CollectionsEqual(new[] { 960, 960, 580 }, sink.ChunkSizes, "chunk sizes");
            Check.Equal(320, new VoiceChunker(16000).ChunkSamples, "20 ms at 16 kHz");
        }

        public static void ConvertsFloatToInt16WithClamping()
        {
            var sink = new RecordingSink();
            var chunker = new VoiceChunker(16000);
            chunker.Write(new[] { 0f, 0.5f, -0.5f, 1f, -1f, 2f, -2f }, 0, 7, 1, 16000, sink);
            chunker.Flush(sink);
            CollectionsEqual(new short[] { 0, 16384, -16384, 32767, -32767, 32767, -32767 }, sink.Samples, "samples");
        }

        public static void DownmixesInterleavedChannels()
        {
            var sink = new RecordingSink();
            var chunker = new VoiceChunker(48000);
            chunker.Write(new[] { 9f, 9f, 0.5f, 0.1f, -0.2f, 0.0f }, 2, 2, 2, 48000, sink);
            chunker.Flush(sink);
            CollectionsEqual(new short[] { 9830, -3277 }, sink.Samples, "mean of each frame, from the offset");
        }

        public static void ResamplesASineFrom44100To48000()
        {
            var sink = new RecordingSink();
            var chunker = new VoiceChunker(48000);
            const double hz = 440;
            var second = new float[44100];
            for (int i = 0; i < second.Length; i++)
                second[i] = (float)(0.5 * Math.Sin(2 * Math.PI * hz * i / 44100));
            // Odd block sizes, as audio callbacks deliver them.
            for (int at = 0; at < second.Length; at += 1021)
                chunker.Write(second, at, Math.Min(1021, second.Length - at), 1, 44100, sink);
            chunker.Flush(sink);
            Check.Near(48000, sink.Samples.Count, 2, "one second in, one second out");
            for (int i = 0; i < sink.Samples.Count - 2; i++)
            {
                double expected = 0.5 * Math.Sin(2 * Math.PI * hz * i / 48000) * 32767;
                Check.Near(expected, sink.Samples[i], 40, "sample " + i);
            }
        }

        public static void BlockBoundariesDoNotChangeTheOutput()
        {
            var voice = new float[3000];
            var random = new Random(7);
            for (int i = 0; i < voice.Length; i++)
                voice[i] = (float)(random.NextDouble() * 2 - 1);
            var whole = new RecordingSink();
            var wholeChunker = new VoiceChunker(16000);
            wholeChunker.Write(voice, 0, voice.Length, 1, 48000, whole);
            wholeChunker.Flush(whole);
            var split = new RecordingSink();
            var splitChunker = new VoiceChunker(16000);
            for (int at = 0, size = 1; at < voice.Length; at += size, size = size % 97 + 13)
                splitChunker.Write(voice, at, Math.Min(size, voice.Length - at), 1, 48000, split);
            splitChunker.Flush(split);
            CollectionsEqual(whole.Samples, split.Samples, "48 kHz to 16 kHz, whole or in pieces");
            Check.Equal(1000, whole.Samples.Count, "a third of the samples");
        }

        public static void RemembersAFailedPush()
        {
            var sink = new RecordingSink { Answer = AvatarResult.Closed };
            var chunker = new VoiceChunker(16000);
            chunker.Write(new float[320], 0, 320, 1, 16000, sink);
            Check.Equal(AvatarResult.Closed, chunker.LastPushResult, "last push result");
        }

        public static void WritingAllocatesNothing()
        {
            var sink = new CountingSink();
            var chunker = new VoiceChunker(48000);
            var callback = new float[2 * 1024];
            Check.AllocatesNothing(() => chunker.Write(callback, 0, 1024, 2, 44100, sink), "Write");
        }

        static void CollectionsEqual<T>(IList<T> expected, IList<T> actual, string what)
        {
            Check.Equal(expected.Count, actual.Count, what + ": count");
            for (int i = 0; i < expected.Count; i++)
                Check.Equal(expected[i], actual[i], what + "[" + i + "]");
        }
    }

    public static class ReconnectPolicyTests
    {
        public static void BacksOffExponentiallyUpToTheCap()
        {
            var policy = new ReconnectPolicy(seed: 1) { Jitter = 0, InitialDelaySeconds = 0.5, MaxDelaySeconds = 3,
                                                        MaxAttempts = 5 };
            var delays = new List<double>();
            double delay;
            while (policy.TryNextDelay(GrpcStatusCode.Unavailable, out delay))
                delays.Add(delay);
            Check.Equal(5, delays.Count, "attempts");
            double[] expected = { 0.5, 1, 2, 3, 3 };
            for (int i = 0; i < expected.Length; i++)
                Check.Near(expected[i], delays[i], 1e-9, "delay " + i);
        }

        public static void JitterStaysWithinItsBounds()
        {
            var policy = new ReconnectPolicy(seed: 3) { Jitter = 0.2, InitialDelaySeconds = 1, Multiplier = 1,
                                                        MaxAttempts = 1000 };
            double delay, low = double.MaxValue, high = 0;
            for (int i = 0; i < 1000; i++)
            {
                Check.True(policy.TryNextDelay(GrpcStatusCode.Unavailable, out delay), "retry " + i);
                low = Math.Min(low, delay);
                high = Math.Max(high, delay);
            }
            Check.True(low >= 0.8 && high <= 1.2, "within 20%: " + low + ".." + high);
            Check.True(high - low > 0.3, "and actually jittered: " + low + ".." + high);
        }

        public static void PermanentErrorsAndNormalEndsAreNotRetried()
        {
            var policy = new ReconnectPolicy(seed: 1);
            double delay;
            foreach (var status in new[] { GrpcStatusCode.Ok, GrpcStatusCode.InvalidArgument,
                                           GrpcStatusCode.FailedPrecondition, GrpcStatusCode.NotFound,
                                           GrpcStatusCode.Unauthenticated, GrpcStatusCode.PermissionDenied,
                                           GrpcStatusCode.DataLoss, GrpcStatusCode.Cancelled })
                Check.True(!policy.TryNextDelay(status, out delay), status + " is not retried");
            foreach (var status in new[] { GrpcStatusCode.Unavailable, GrpcStatusCode.ResourceExhausted,
                                           GrpcStatusCode.Aborted, GrpcStatusCode.DeadlineExceeded })
                Check.True(ReconnectPolicy.IsRetryable(status), status + " is retried");
        }

        public static void ResetStartsAgainFromTheInitialDelay()
        {
            var policy = new ReconnectPolicy(seed: 1) { Jitter = 0, MaxAttempts = 2 };
            double delay;
            policy.TryNextDelay(GrpcStatusCode.Unavailable, out delay);
            policy.TryNextDelay(GrpcStatusCode.Unavailable, out delay);
            Check.True(!policy.TryNextDelay(GrpcStatusCode.Unavailable, out delay), "gives up after MaxAttempts");
            policy.Reset();
            Check.True(policy.TryNextDelay(GrpcStatusCode.Unavailable, out delay), "after a live session");
            Check.Near(policy.InitialDelaySeconds, delay, 1e-9, "initial delay");
        }
    }
}

namespace AvatarBackend.Client.Tests
{
    public static class StrippingTests
    {
        /// <summary>Every struct, handle and the DllImport class carry [Preserve] (honoured by Unity's linker
        /// by name), so IL2CPP keeps what only native code or the marshaller uses.</summary>
        public static void NativeTypesArePreserved()
        {
            var nativeTypes = new System.Collections.Generic.List<System.Type>();
            foreach (System.Type type in typeof(AvatarBackend.Client.Native.AvatarClientNative).Assembly.GetTypes())
                if (type.Namespace == "AvatarBackend.Client.Native" && !type.IsEnum && type.IsPublic &&
                    type != typeof(AvatarBackend.Client.Native.PreserveAttribute) && !type.IsNested)
                    nativeTypes.Add(type);
            Check.True(nativeTypes.Count >= 8, "found the native types: " + nativeTypes.Count);
            foreach (System.Type type in nativeTypes)
            {
                if (type == typeof(AvatarBackend.Client.Native.NativeUtf8Strings) ||
                    type == typeof(AvatarBackend.Client.Native.Utf8))
                    continue;  // reached from managed code only
                Check.True(type.GetCustomAttributes(typeof(AvatarBackend.Client.Native.PreserveAttribute), false).Length == 1,
                           type.Name + " has [Preserve]");
            }
        }
    }
}
