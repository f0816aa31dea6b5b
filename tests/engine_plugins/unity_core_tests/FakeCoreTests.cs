// The P/Invoke layer, AvatarClient and AvatarSession against fake_avatar_client.c (a scripted library with the
// real header's ABI, loaded as avatar_client): what crosses the boundary arrives intact, handles are freed
// once and in order, and the per-frame calls allocate nothing.
using System;
using System.Runtime.InteropServices;
using AvatarBackend.Client.Native;

namespace AvatarBackend.Client.Tests
{
    public static class FakeCoreTests
    {
        [DllImport(AvatarClientNative.LibraryName)]
        static extern int fake_live_objects();

        static AvatarClient NewClient()
        {
            return new AvatarClient(new AvatarClientOptions { Target = "game-server:50051" });
        }

        static AvatarSession OpenLiveSession(AvatarClient client, uint sampleRate = 48000)
        {
            var session = client.OpenSession(new AvatarSessionOptions
            {
                NpcId = "smith-1", CharacterId = "smith", Width = 16, Height = 8, Fps = 25, SampleRate = sampleRate,
            });
            Check.Equal(SessionState.Opening, session.PollEvent().State, "first state");
            Check.Equal(SessionState.Live, session.PollEvent().State, "second state");
            return session;
        }

        public static void ClientConfigArrivesWithEveryStringAndFlag()
        {
            var options = new AvatarClientOptions
            {
                Target = "npc.example:443", ApiKey = "sëcret", UseTls = true, TlsRootCertsPem = "ROOTS",
                ConnectTimeoutMs = 1234, KeepaliveMs = 5678,
            };
            using (var client = new AvatarClient(options))
                Check.Equal("target=npc.example:443 api_key=sëcret tls=1 roots=ROOTS cert=(null) key=(null) " +
                            "connect_timeout_ms=1234 keepalive_ms=5678", client.LastError, "what the core received");
            using (var client = NewClient())
                Check.True(client.LastError.Contains("api_key=(null) tls=0"), "an empty key is NULL: " + client.LastError);
            Check.Equal(0, fake_live_objects(), "all freed");
        }

        public static void SessionConfigArrivesWithEveryField()
        {
            using (var client = NewClient())
            using (var session = client.OpenSession(new AvatarSessionOptions
            {
                NpcId = "keeper.2", CharacterId = "", Width = 64, Height = 48, Fps = 20, SampleRate = 16000,
                JpegQuality = 70, ResetMemory = true, Reconnect = false, MaxBufferedFrames = 12, PromptGuidance = 3.5f,
                ReconnectTimeoutMs = 9000,
            }))
            {
                Check.Equal("npc_id=keeper.2 character_id=(null) width=64 height=48 fps=20 sample_rate=16000 " +
                            "jpeg_quality=70 reset_memory=1 reconnect=0 max_buffered_frames=12 prompt_guidance=3.50 " +
                            "reconnect_timeout_ms=9000",
                            session.LastError,
                            "what the core received");
                Check.Equal(16000, session.SampleRate, "session clock rate");
            }
        }

        public static void RefusedSessionThrowsWithTheStatusAndMessage()
        {
            using (var client = NewClient())
            {
                try
                {
                    client.OpenSession(new AvatarSessionOptions { NpcId = "refused" });
                }
                catch (AvatarBackendException error)
                {
                    Check.Equal((int)GrpcStatusCode.InvalidArgument, error.Result, "result");
                    Check.True(error.Message.Contains("InvalidArgument") && error.Message.Contains("character_id"),
                               "message: " + error.Message);
                    return;
                }
                throw new CheckFailed("no exception");
            }
        }

        public static void MissingNpcIdIsRefusedBeforeTheCore()
        {
            using (var client = NewClient())
                Check.Throws<ArgumentException>(() => client.OpenSession(new AvatarSessionOptions()), "no npc id");
        }

        public static void VoiceComesBackAsEchoedAudioAndFramesOnTheSessionClock()
        {
            using (var client = NewClient())
            using (var session = OpenLiveSession(client))
            using (var frame = new FrameBuffer(PixelFormat.Rgba, 0, 0))
            {
                Check.Equal(AvatarResult.NotReady, session.PollDueFrame(100000, frame), "no frame yet");
                var chunker = new VoiceChunker(48000);
                var voice = new float[48000];  // one second at 48 kHz: 25 frames at 25 fps
                for (int i = 0; i < voice.Length; i++)
                    voice[i] = (i % 100) / 200f;
                chunker.Write(voice, 0, voice.Length, 1, 48000, session);
                chunker.Flush(session);
                Check.Equal(AvatarResult.Ok, session.EndUtterance(), "end of utterance");
                var done = session.PollEvent();
                Check.Equal(SessionEventType.Server, done.Type, "event type");
                Check.Equal(ServerEventCode.UtteranceComplete, done.ServerCode, "event code");

                var echoed = new short[4800];
                int count;
                ulong start;
                Check.Equal(AvatarResult.Ok, session.PollAudio(echoed, out count, out start), "poll audio");
                Check.Equal(4800, count, "a full buffer");
                Check.Equal(0UL, start, "from the session's start");
                Check.Equal((short)Math.Round(99 / 200f * 32767f), echoed[99], "the voice, sample for sample");
                session.PollAudio(echoed, out count, out start);
                Check.Equal(4800UL, start, "gapless");

                Check.Equal(AvatarResult.Ok, session.PollDueFrame(1919, frame), "frame 0 (pts 0) due");
                Check.Equal(0UL, frame.Info.index, "frame 0");
                Check.Equal(AvatarResult.Ok, session.PollDueFrame(1920 * 3 + 5, frame), "frame 3 due");
                Check.Equal(3UL, frame.Info.index, "the newest due frame");
                Check.Equal(16, frame.Width, "width");
                Check.Equal(8, frame.Height, "height");
                Check.Equal(16 * 8 * 4, frame.ByteCount, "RGBA bytes");
                Check.Equal((byte)3, frame.Pixels[frame.ByteCount - 1], "the frame's pixels");
                var stats = new AvbStats();
                Check.Equal(AvatarResult.Ok, session.GetStats(ref stats), "stats (struct_size accepted)");
                Check.Equal(2UL, stats.frames_dropped, "frames 1-2 skipped by the A/V clock");
                Check.Equal(23U, stats.buffered_frames, "frames 4-24 and two silent ones wait");
                Check.Equal(123.5, stats.first_frame_latency_ms, "a double after uint32/uint64 fields");
                Check.Equal(2U, stats.reconnects, "the last field");
                Check.Equal(AvatarResult.Ok, session.PollFrame(frame), "oldest frame");
                Check.Equal(4UL, frame.Info.index, "frame 4");
                Check.Equal(7680UL, frame.Info.pts, "pts");
                Check.Equal(9600UL, frame.Info.audio_end, "audio_end");
                Check.Equal(1, frame.Info.speaking, "speaking");
            }
        }

        public static void FrameBufferGrowsToTheFirstFrameWithoutBeingTold()
        {
            using (var client = NewClient())
            using (var session = client.OpenSession(new AvatarSessionOptions
                   { NpcId = "big", Width = 600, Height = 400, Fps = 25 }))
            using (var frame = new FrameBuffer(PixelFormat.Rgb, 0, 0))
            {
                session.PushPcm(new short[1920], 1920);
                session.EndUtterance();
                Check.Equal(AvatarResult.Ok, session.PollFrame(frame), "poll after growing");
                Check.True(frame.Pixels.Length >= 600 * 400 * 3, "room for the frame: " + frame.Pixels.Length);
                Check.Equal(600 * 400 * 3, frame.ByteCount, "RGB bytes");
                Check.Equal(1L, frame.FramesPolled, "one frame");
            }
        }

        public static void ControlCallsCarryTheirUtf8Text()
        {
            using (var client = NewClient())
            using (var session = OpenLiveSession(client))
            {
                session.SetEmotion("fröhlich 😊", 0.25f);
                var emotion = session.PollEvent();
                Check.Equal(ServerEventCode.UnknownEmotion, emotion.ServerCode, "the fake answers emotions with code 4");
                Check.Equal("fröhlich 😊@0.25", emotion.Text, "name and intensity");
                session.PlayAction("wave");
                Check.Equal("wave", session.PollEvent().Text, "action preset");
                session.SetListening(true);
                Check.Equal("listening", session.PollEvent().Text, "listening flag");
                Check.True(session.PollEvent() == null, "no more events");
            }
        }

        public static void TimedControlCarriesItsVoiceSampleAndTheCountIsTheVoiceInPackets()
        {
            using (var client = NewClient())
            {
                var session = OpenLiveSession(client);
                Check.Equal(0UL, session.VoiceSamplesSent, "nothing said yet");
                session.PushPcm(new short[1000], 1000);
                Check.Equal(960UL, session.VoiceSamplesSent, "one 20 ms packet at 48 kHz; 40 samples wait");
                session.EndUtterance();
                Check.Equal(ServerEventCode.UtteranceComplete, session.PollEvent().ServerCode, "utterance end");
                Check.Equal(1920UL, session.VoiceSamplesSent, "the rest and the look-ahead, padded to a packet");

                ulong beyond32Bits = (1UL << 33) + 7;
                Check.Equal(AvatarResult.Ok, session.SetEmotion("fröhlich", 0.5f, beyond32Bits), "timed emotion");
                Check.Equal("fröhlich@0.50 at=8589934599", session.PollEvent().Text, "name, intensity, voice sample");
                Check.Equal(AvatarResult.Ok, session.PlayAction("wave", 1920UL), "timed action");
                Check.Equal("wave at=1920", session.PollEvent().Text, "preset and voice sample");
                session.SetEmotion("calm", 1f);
                Check.Equal("calm@1.00", session.PollEvent().Text, "an untimed emotion stays untimed");
                session.Dispose();
                Check.Equal(0UL, session.VoiceSamplesSent, "a disposed session has sent nothing more");
                // An audio thread may still push and end its utterance as the main thread disposes the session.
                Check.Equal(AvatarResult.Closed, session.PushPcm(new short[960], 960), "push after dispose");
                Check.Equal(AvatarResult.Closed, session.EndUtterance(), "end of utterance after dispose");
            }
        }

        public static void InterruptAckValuesArriveInTheHeadersOrder()
        {
            using (var client = NewClient())
            using (var session = OpenLiveSession(client))
            {
                session.Interrupt();
                var ack = session.PollEvent();
                Check.Equal(SessionEventType.InterruptAck, ack.Type, "type");
                Check.Equal(7UL, ack.NextFrameIndex, "next_frame_index");
                Check.Equal(4800UL, ack.ReplaceFromPts, "replace_from_pts");
                Check.Equal(100UL, ack.DroppedSamples, "dropped_samples");
                Check.Equal(200UL, ack.UnheardSamples, "unheard_samples");
            }
        }

        public static void CloseEndsWithTheResumeTokenAndLaterPushesSayClosed()
        {
            using (var client = NewClient())
            using (var session = OpenLiveSession(client))
            {
                Check.Equal(AvatarResult.Ok, session.Close(), "close");
                var ended = session.PollEvent();
                Check.Equal(SessionEventType.Ended, ended.Type, "ended");
                Check.Equal("resume-token-of-the-fake", session.ResumeToken, "resume token");
                Check.Equal(SessionState.Closed, session.State, "state");
                Check.Equal(AvatarResult.Closed, session.PushPcm(new short[10], 10), "push after close");
            }
        }

        public static void ClientDisposedBeforeItsSessionIsFreedLast()
        {
            // The fake aborts the process if the client is destroyed while a session is live, or a handle twice.
            var client = NewClient();
            var session = OpenLiveSession(client);
            client.Dispose();
            Check.Equal(2, fake_live_objects(), "the client waits for its session");
            session.Dispose();
            Check.Equal(0, fake_live_objects(), "both freed");
            Check.Equal(AvatarResult.Closed, session.PushPcm(new short[1], 1), "push after dispose");
            Check.True(session.PollEvent() == null, "poll after dispose");
        }

        public static void SharedClientsAreOnePerServerAndFreedWithTheLastLease()
        {
            var options = new AvatarClientOptions { Target = "shared:1" };
            var first = SharedAvatarClients.Acquire(options);
            var second = SharedAvatarClients.Acquire(new AvatarClientOptions { Target = "shared:1" });
            var other = SharedAvatarClients.Acquire(new AvatarClientOptions { Target = "shared:2" });
            Check.True(ReferenceEquals(first.Client, second.Client), "same server, same client");
            Check.Equal(2, SharedAvatarClients.Count, "two servers");
            first.Dispose();
            first.Dispose();
            Check.Equal(2, SharedAvatarClients.Count, "still leased");
            second.Dispose();
            other.Dispose();
            Check.Equal(0, SharedAvatarClients.Count, "all released");
            Check.Equal(0, fake_live_objects(), "all freed");
        }

        public static void PerFrameCallsAllocateNothing()
        {
            using (var client = NewClient())
            using (var session = OpenLiveSession(client))
            using (var frame = new FrameBuffer(PixelFormat.Rgba, 16, 8))
            {
                var voice = new short[960];
                var echoed = new short[4800];
                var stats = new AvbStats();
                Check.AllocatesNothing(() =>
                {
                    int count;
                    ulong start;
                    session.PushPcm(voice, voice.Length);
                    if (session.VoiceSamplesSent == 0)
                        throw new CheckFailed("voice not counted");
                    session.PlaybackProgress(1000);
                    session.PollDueFrame(1000, frame);
                    session.PollAudio(echoed, out count, out start);
                    session.PollEvent();
                    session.GetStats(ref stats);
                }, "push, voice count, playback position, polls with nothing to return, stats");
                session.PushPcm(new short[48000], 48000);
                session.EndUtterance();
                session.PollEvent();
                ulong position = 0;
                Check.AllocatesNothing(() =>
                {
                    position += 1920;
                    if (session.PollDueFrame(position, frame) != AvatarResult.Ok)
                        throw new CheckFailed("no frame at " + position);
                }, "polling a due frame");
            }
        }
    }
}
