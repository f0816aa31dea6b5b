// One conversation with one NPC (avb_session): voice in, decoded frames, echoed voice and events out.
//
// Every method may be called from any thread and none blocks on the network (the core queues pushes and
// returns what has arrived); poll events from one thread at a time (the event is decoded in a reused struct). The per-frame paths (PushPcm, PollDueFrame, PollAudio, PollEvent when there is
// none, PlaybackProgress, GetStats) allocate nothing managed; events and errors allocate their strings.
using System;
using AvatarBackend.Client.Native;

namespace AvatarBackend.Client
{
    /// <summary>EventCode of the contract (a Server event's code).</summary>
    public enum ServerEventCode
    {
        Unspecified = 0,
        Draining = 1,
        FramesDropped = 2,
        AudioGarbage = 3,
        UnknownEmotion = 4,
        UnknownAction = 5,
        UtteranceComplete = 6,
        AudioGap = 7,
        InvalidEvent = 8,
    }

    /// <summary>One polled avb_event, decoded.</summary>
    public sealed class AvatarSessionEvent
    {
        public SessionEventType Type;
        /// <summary>State: a <see cref="SessionState"/>; Server: a <see cref="ServerEventCode"/>; Ended: 0 or a
        /// gRPC status code.</summary>
        public int Code;
        public ulong Value0, Value1, Value2, Value3;
        public string Text;
        public string Detail;

        public SessionState State { get { return (SessionState)Code; } }
        public ServerEventCode ServerCode { get { return (ServerEventCode)Code; } }
        public GrpcStatusCode EndStatus { get { return (GrpcStatusCode)Code; } }
        // InterruptAck values, in the header's order.
        public ulong NextFrameIndex { get { return Value0; } }
        public ulong ReplaceFromPts { get { return Value1; } }
        public ulong DroppedSamples { get { return Value2; } }
        public ulong UnheardSamples { get { return Value3; } }
        /// <summary>Ended: the NPC's resume token.</summary>
        public string ResumeToken { get { return Detail; } }

        public override string ToString()
        {
            return string.Format("{0} code={1} [{2}, {3}, {4}, {5}] {6} {7}", Type, Code, Value0, Value1, Value2,
                                 Value3, Text, Detail);
        }
    }

    /// <summary>Where PCM voice goes: a session, or anything that stands in for one.</summary>
    public interface IVoiceSink
    {
        /// <summary>Mono int16 samples at the session's sample rate, samples[0..count).</summary>
        AvatarResult PushPcm(short[] samples, int count);
    }

    /// <summary>A session with one NPC. Dispose it before its <see cref="AvatarClient"/>.</summary>
    public sealed class AvatarSession : IVoiceSink, IDisposable
    {
        readonly SessionHandle handle;
        AvbEvent nativeEvent;
        volatile SessionState state = SessionState.Opening;

        internal AvatarSession(SessionHandle handle, AvatarSessionOptions options)
        {
            this.handle = handle;
            NpcId = options.NpcId;
            SampleRate = options.SampleRate == 0 ? 48000 : (int)options.SampleRate;
        }

        public string NpcId { get; private set; }
        /// <summary>The session clock's rate: positions are in samples at this rate.</summary>
        public int SampleRate { get; private set; }
        /// <summary>The latest state the polled events reported.</summary>
        public SessionState State { get { return state; } }
        /// <summary>The NPC's resume token from the Ended event, once polled.</summary>
        public string ResumeToken { get; private set; }
        /// <summary>The Ended event's status (0 for a normal end), once polled.</summary>
        public int EndStatus { get; private set; }
        public bool IsDisposed { get { return handle.IsClosed; } }

        public string LastError
        {
            get { return handle.IsClosed ? "the session was disposed" : AvatarClient.ReadError(null, handle); }
        }

        // --- voice ---

        public AvatarResult PushPcm(short[] samples, int count)
        {
            if (samples == null || count < 0 || count > samples.Length)
                return AvatarResult.BadArgument;
            // Called from audio threads, which must never see an exception from a session disposed meanwhile.
            try
            {
                return (AvatarResult)AvatarClientNative.avb_session_push_pcm(handle, samples, (UIntPtr)count);
            }
            catch (ObjectDisposedException)
            {
                return AvatarResult.Closed;
            }
        }

        /// <summary>One raw Opus packet (do not mix with PushPcm within an utterance).</summary>
        public AvatarResult PushOpus(byte[] packet, int size)
        {
            if (packet == null || size < 0 || size > packet.Length)
                return AvatarResult.BadArgument;
            try
            {
                return (AvatarResult)AvatarClientNative.avb_session_push_opus(handle, packet, (UIntPtr)size);
            }
            catch (ObjectDisposedException)
            {
                return AvatarResult.Closed;
            }
        }

        /// <summary>Ends the utterance; like <see cref="PushPcm"/>, safe from an audio thread while the session is
        /// disposed (Closed then).</summary>
        public AvatarResult EndUtterance()
        {
            try
            {
                return (AvatarResult)AvatarClientNative.avb_session_end_utterance(handle);
            }
            catch (ObjectDisposedException)
            {
                return AvatarResult.Closed;
            }
        }

        /// <summary>The voice sent so far, in samples at <see cref="SampleRate"/>: what the atVoiceSample of
        /// <see cref="SetEmotion(string, float, ulong)"/> and <see cref="PlayAction(string, ulong)"/> counts. Pushed
        /// samples count once they are in a 20 ms packet (the core holds a shorter remainder until the next push or
        /// EndUtterance), the end of an utterance's padding counts too, so right after EndUtterance it is exactly
        /// where the next utterance's first sample goes. 0 once disposed.</summary>
        public ulong VoiceSamplesSent
        {
            get
            {
                try
                {
                    return AvatarClientNative.avb_session_voice_samples_sent(handle);
                }
                catch (ObjectDisposedException)
                {
                    return 0;
                }
            }
        }

        // --- control ---

        /// <summary>One of the character's emotion prompts; "" returns to the base prompt. Intensity 0-1.</summary>
        public AvatarResult SetEmotion(string name, float intensity)
        {
            return (AvatarResult)AvatarClientNative.avb_session_set_emotion(handle, Utf8.NullTerminated(name ?? ""),
                                                                             intensity);
        }

        /// <summary>One of the character's action presets.</summary>
        public AvatarResult PlayAction(string preset)
        {
            return (AvatarResult)AvatarClientNative.avb_session_play_action(handle, Utf8.NullTerminated(preset ?? ""));
        }

        /// <summary>As <see cref="SetEmotion(string, float)"/>, from the block that starts nearest to voice sample
        /// <paramref name="atVoiceSample"/> (a <see cref="VoiceSamplesSent"/> count: the count before a clip plus
        /// a word's offset in it, at the session's rate). A point already on video applies from the next block;
        /// an interrupt cancels the events not reached yet.</summary>
        public AvatarResult SetEmotion(string name, float intensity, ulong atVoiceSample)
        {
            return (AvatarResult)AvatarClientNative.avb_session_set_emotion_at(handle, Utf8.NullTerminated(name ?? ""),
                                                                                intensity, atVoiceSample);
        }

        /// <summary>As <see cref="PlayAction(string)"/>, from the block that starts nearest to voice sample
        /// <paramref name="atVoiceSample"/> (see <see cref="SetEmotion(string, float, ulong)"/>).</summary>
        public AvatarResult PlayAction(string preset, ulong atVoiceSample)
        {
            return (AvatarResult)AvatarClientNative.avb_session_play_action_at(handle, Utf8.NullTerminated(preset ?? ""),
                                                                                atVoiceSample);
        }

        /// <summary>True while the player speaks: the NPC listens instead of idling.</summary>
        public AvatarResult SetListening(bool listening)
        {
            return (AvatarResult)AvatarClientNative.avb_session_set_listening(handle, listening ? 1 : 0);
        }

        /// <summary>What the player has heard, on the session clock.</summary>
        public AvatarResult PlaybackProgress(ulong playedUntil)
        {
            return (AvatarResult)AvatarClientNative.avb_session_playback_progress(handle, playedUntil);
        }

        /// <summary>Stop talking now; answered by an InterruptAck event.</summary>
        public AvatarResult Interrupt()
        {
            return (AvatarResult)AvatarClientNative.avb_session_interrupt(handle);
        }

        /// <summary>Ends the stream normally: the server saves the NPC's memory and an Ended event follows.</summary>
        public AvatarResult Close()
        {
            if (handle.IsClosed)
                return AvatarResult.Closed;
            return (AvatarResult)AvatarClientNative.avb_session_close(handle);
        }

        // --- frames ---

        /// <summary>The oldest buffered frame, into <paramref name="frame"/> (grown when it is too small).</summary>
        public AvatarResult PollFrame(FrameBuffer frame)
        {
            return PollFrameInto(frame, false, 0);
        }

        /// <summary>The A/V clock: the newest buffered frame whose pts &lt;= <paramref name="playbackPts"/>;
        /// NotReady when none is due.</summary>
        public AvatarResult PollDueFrame(ulong playbackPts, FrameBuffer frame)
        {
            return PollFrameInto(frame, true, playbackPts);
        }

        AvatarResult PollFrameInto(FrameBuffer frame, bool due, ulong playbackPts)
        {
            // The frame's size is only known from the frame itself: grow and ask again while the core says the
            // buffer is too small (it takes nothing in that case).
            for (int attempt = 0; attempt < FrameBuffer.MaxGrowthSteps; attempt++)
            {
                AvbFrameInfo info;
                int result = due
                    ? AvatarClientNative.avb_session_poll_due_frame(handle, playbackPts, (int)frame.Format,
                                                                    frame.Pixels, (UIntPtr)frame.Pixels.Length, out info)
                    : AvatarClientNative.avb_session_poll_frame(handle, (int)frame.Format, frame.Pixels,
                                                                (UIntPtr)frame.Pixels.Length, out info);
                if (result == (int)AvatarResult.BufferTooSmall)
                {
                    if (!frame.Grow(info))
                        return AvatarResult.BufferTooSmall;
                    continue;
                }
                if (result == (int)AvatarResult.Ok)
                    frame.Accept(info);
                return (AvatarResult)result;
            }
            return AvatarResult.BufferTooSmall;
        }

        // --- echoed voice ---

        /// <summary>Echoed voice (mono int16 at the session's rate, in order, gapless) into samples; count is 0
        /// when none has arrived. start: the first sample's place on the session clock.</summary>
        public AvatarResult PollAudio(short[] samples, out int count, out ulong start)
        {
            UIntPtr nativeCount;
            int result = AvatarClientNative.avb_session_poll_audio(handle, samples, (UIntPtr)samples.Length,
                                                                   out nativeCount, out start);
            count = result == (int)AvatarResult.Ok ? (int)(ulong)nativeCount : 0;
            return (AvatarResult)result;
        }

        // --- events and stats ---

        /// <summary>The next event, or null when there is none (no allocation then). Tracks State, ResumeToken
        /// and EndStatus.</summary>
        public unsafe AvatarSessionEvent PollEvent()
        {
            if (handle.IsClosed)
                return null;
            int result = AvatarClientNative.avb_session_poll_event(handle, out nativeEvent);
            if (result != (int)AvatarResult.Ok)
                return null;
            var polled = new AvatarSessionEvent
            {
                Type = (SessionEventType)nativeEvent.type,
                Code = nativeEvent.code,
            };
            fixed (AvbEvent* e = &nativeEvent)
            {
                polled.Value0 = e->values[0];
                polled.Value1 = e->values[1];
                polled.Value2 = e->values[2];
                polled.Value3 = e->values[3];
                polled.Text = Utf8.FromNullTerminated(e->text, AvbEvent.TextCapacity);
                polled.Detail = Utf8.FromNullTerminated(e->detail, AvbEvent.DetailCapacity);
            }
            if (polled.Type == SessionEventType.State)
                state = polled.State;
            else if (polled.Type == SessionEventType.Ended)
            {
                ResumeToken = polled.Detail;
                EndStatus = polled.Code;
                state = SessionState.Closed;
            }
            return polled;
        }

        public AvatarResult GetStats(ref AvbStats stats)
        {
            stats.struct_size = (uint)System.Runtime.InteropServices.Marshal.SizeOf(typeof(AvbStats));
            return (AvatarResult)AvatarClientNative.avb_session_get_stats(handle, ref stats);
        }

        /// <summary>Cancels the stream if it is still open and frees the session (Close first for a normal end).</summary>
        public void Dispose()
        {
            handle.Dispose();
        }
    }
}
