// An NPC that talks: its voice goes to the server, its face comes back as a texture, its echoed voice plays
// through the AudioSource on the same GameObject and every frame is shown when the voice reaches its pts.
//
// Threads: the session is polled on the main thread (Update): events, echoed voice, the due frame (uploaded
// to a Texture2D from a reused pinned buffer). The audio thread only reads the echoed voice out of
// EchoPlayback in OnAudioFilterRead; what it has played is the A/V clock. Voice pushed from audio threads
// (NpcVoiceCapture) goes straight to the core, which never blocks.
using System;
using AvatarBackend.Client.Native;
using UnityEngine;
using UnityEngine.Events;
using UnityEngine.UI;

namespace AvatarBackend.Client
{
    [AddComponentMenu("Avatar Backend/NPC Avatar")]
    [DisallowMultipleComponent]
    [RequireComponent(typeof(AudioSource))]
    public sealed class NpcAvatar : MonoBehaviour
    {
        [Header("Server")]
        [Tooltip("host:port of avatar-backend serve")]
        public string serverTarget = "127.0.0.1:50051";
        public string apiKey = "";
        public bool useTls;

        [Header("NPC")]
        [Tooltip("The NPC's id: its memory (how it looked and moved) persists across sessions")]
        public string npcId = "npc-1";
        [Tooltip("The registered character the NPC looks like; required for a new NPC")]
        public string characterId = "";
        [Tooltip("0: the NPC's own size, or the model's default")]
        public int width;
        public int height;
        [Tooltip("0: the model's")]
        public int fps;
        public SessionSampleRate sampleRate = SessionSampleRate.Hz48000;
        public bool resetMemory;
        [Tooltip("After a dropped connection, reopen with the NPC's resume token")]
        public bool reconnect = true;
        [Tooltip("With reconnect: milliseconds without a live stream before the session gives up and ends " +
                 "(0: never); restartAfterErrors may then open a new one")]
        [Min(0)]
        public int reconnectTimeoutMs;
        [Tooltip("Open a new session after one ended with a retryable error (server restart, draining)")]
        public bool restartAfterErrors = true;
        [Tooltip("Decoded frames the core holds; beyond it the oldest go (0: 96)")]
        public int maxBufferedFrames;
        [Tooltip("How strongly emotions and actions show: the prompt guidance factor (0: the server's; else 1 = " +
                 "off or more: higher shows them sooner and clearer, at some cost in lip sync)")]
        [Min(0f)]
        public float promptGuidance;
        public bool startOnEnable = true;

        [Header("Video: any of these")]
        public RawImage targetImage;
        public Renderer targetRenderer;
        public string texturePropertyName = "_MainTex";
        public RenderTexture targetRenderTexture;

        [Header("Voice")]
        [Tooltip("Spoken by Speak() without arguments")]
        public AudioClip voiceClip;
        [Tooltip("Microphone device for StartMicrophone(); empty: the default")]
        public string microphoneDevice = "";

        [Header("Events")]
        public SessionStateEvent onSessionStateChanged = new SessionStateEvent();
        public UnityEvent onUtteranceComplete = new UnityEvent();
        public InterruptedEvent onInterrupted = new InterruptedEvent();
        public ServerEventEvent onServerEvent = new ServerEventEvent();
        public AvatarErrorEvent onError = new AvatarErrorEvent();

        // Polling limits per Update, so a burst (a block of frames, a reconnect's backlog) never stalls a frame.
        const int MaxEventsPerUpdate = 64;
        const int MaxAudioPollsPerUpdate = 32;
        const float StatsRefreshSeconds = 0.5f;
        const float CloseTimeoutSeconds = 3f;
        const int MicrophoneSeconds = 2;

        AudioSource echoSource;
        AudioClip silentLoop;
        int outputSampleRate;

        SharedAvatarClients.Lease clientLease;
        volatile AvatarSession session;
        EchoPlayback echo;
        AvClock clock;
        VoiceChunker voiceChunker;
        FrameBuffer frameBuffer;
        Texture2D frameTexture;
        short[] echoBuffer;
        float[] clipBuffer;
        readonly FrameRateMeter shownFrames = new FrameRateMeter();
        readonly ReconnectPolicy restartPolicy = new ReconnectPolicy();
        float restartAt = -1;
        float closeDeadline = -1;
        float nextStatsRefresh;
        double lastAvOffsetMs = double.NaN;
        AvbStats nativeStats;
        NpcAvatarStats stats;

        AudioClip microphoneClip;
        float[] microphoneBlock;
        int microphoneReadPosition;

        /// <summary>The live session, or null. Thread safe to read.</summary>
        public AvatarSession Session { get { return session; } }
        /// <summary>The texture the frames go to (created at the first frame's size).</summary>
        public Texture2D FrameTexture { get { return frameTexture; } }
        public NpcAvatarStats Stats { get { return stats; } }
        /// <summary>The NPC's resume token from the last session that ended.</summary>
        public string LastResumeToken { get; private set; }
        /// <summary>The voice sent so far on the session, in samples at its rate (0 without one): the count that
        /// <see cref="SetEmotionAtVoiceSample"/> and <see cref="PlayActionAtVoiceSample"/> take. Exactly where
        /// the next utterance starts when read before Speak or an utterance's first PushVoice; within an
        /// utterance the voice still being chunked (under 20 ms) is not in it yet. Thread safe to read.</summary>
        public ulong VoiceSamplesSent
        {
            get
            {
                var current = session;
                return current != null ? current.VoiceSamplesSent : 0;
            }
        }

        void Awake()
        {
            echoSource = GetComponent<AudioSource>();
        }

        void OnEnable()
        {
            if (startOnEnable)
                StartSession();
        }

        void OnDisable()
        {
            StopMicrophone();
            // Update no longer runs to wait for the Ended event: cancel now (the server still saves the memory).
            DisposeSession();
        }

        // --- session ---

        /// <summary>Connects (sharing one connection per server among NPCs) and opens the NPC's session.</summary>
        public void StartSession()
        {
            StartSession(false);
        }

        void StartSession(bool afterError)
        {
            if (session != null)
                return;
            restartAt = -1;
            try
            {
                clientLease = SharedAvatarClients.Acquire(new AvatarClientOptions
                {
                    Target = serverTarget,
                    ApiKey = apiKey,
                    UseTls = useTls,
                });
                var opened = clientLease.Client.OpenSession(new AvatarSessionOptions
                {
                    NpcId = npcId,
                    CharacterId = characterId,
                    Width = (uint)Mathf.Max(0, width),
                    Height = (uint)Mathf.Max(0, height),
                    Fps = (uint)Mathf.Max(0, fps),
                    SampleRate = (uint)sampleRate,
                    // A session reopened after an error continues the NPC; only the first one may reset it.
                    ResetMemory = resetMemory && !afterError,
                    Reconnect = reconnect,
                    ReconnectTimeoutMs = (uint)Mathf.Max(0, reconnectTimeoutMs),
                    MaxBufferedFrames = (uint)Mathf.Max(0, maxBufferedFrames),
                    PromptGuidance = promptGuidance,
                });
                int rate = opened.SampleRate;
                echo = new EchoPlayback(rate);
                clock = new AvClock(rate);
                voiceChunker = new VoiceChunker(rate);
                frameBuffer = frameBuffer ?? new FrameBuffer(PixelFormat.Rgba, width, height);
                echoBuffer = echoBuffer ?? new short[rate / 10];
                outputSampleRate = AudioSettings.outputSampleRate;
                int bufferLength, bufferCount;
                AudioSettings.GetDSPBufferSize(out bufferLength, out bufferCount);
                clock.OutputLatencySeconds = (double)bufferLength * bufferCount / outputSampleRate;
                session = opened;
                StartEchoOutput();
            }
            catch (Exception error)
            {
                // DllNotFoundException (no native library), a refused config, an ABI mismatch.
                ReleaseClient();
                ReportError("could not start the session for NPC " + npcId + ": " + error.Message);
            }
        }

        /// <summary>Ends the session normally: the server saves the NPC's memory, then the session is freed.</summary>
        public void StopSession()
        {
            if (session == null)
                return;
            StopMicrophone();
            restartAt = -1;
            if (session.Close() == AvatarResult.Ok)
                closeDeadline = Time.unscaledTime + CloseTimeoutSeconds;
            else
                DisposeSession();
        }

        void DisposeSession()
        {
            restartAt = -1;
            closeDeadline = -1;
            var ending = session;
            session = null;
            if (ending != null)
                ending.Dispose();
            StopEchoOutput();
            ReleaseClient();
        }

        void ReleaseClient()
        {
            if (clientLease != null)
            {
                clientLease.Dispose();
                clientLease = null;
            }
        }

        void OnDestroy()
        {
            DisposeSession();
            if (frameBuffer != null)
                frameBuffer.Dispose();
            if (frameTexture != null)
                Destroy(frameTexture);
            if (silentLoop != null)
                Destroy(silentLoop);
        }

        // --- voice ---

        /// <summary>Speaks <see cref="voiceClip"/> as one utterance.</summary>
        public void Speak()
        {
            Speak(voiceClip);
        }

        /// <summary>Speaks a clip as one utterance, all of it at once (as TTS does: the NPC starts at once). The
        /// clip's load type must keep its samples readable (Decompress On Load).</summary>
        public void Speak(AudioClip clip)
        {
            if (clip == null || session == null)
                return;
            int values = clip.samples * clip.channels;
            if (clipBuffer == null || clipBuffer.Length < values)
                clipBuffer = new float[values];
            if (!clip.GetData(clipBuffer, 0))
            {
                ReportError("cannot read the samples of " + clip.name + ": set its load type to Decompress On Load");
                return;
            }
            voiceChunker.Write(clipBuffer, 0, clip.samples, clip.channels, clip.frequency, session);
            EndUtterance();
        }

        /// <summary>Voice from a script (a TTS engine's output): interleaved floats at any rate. Main thread; use
        /// NpcVoiceCapture for an AudioSource's output.</summary>
        public void PushVoice(float[] interleaved, int frames, int channels, int sourceSampleRate)
        {
            if (session != null)
                voiceChunker.Write(interleaved, 0, frames, channels, sourceSampleRate, session);
        }

        /// <summary>The NPC finished saying something.</summary>
        public void EndUtterance()
        {
            if (session == null)
                return;
            voiceChunker.Flush(session);
            session.EndUtterance();
        }

        /// <summary>Streams the microphone as the NPC's voice (at real-time pace) until StopMicrophone.</summary>
        public void StartMicrophone()
        {
            if (session == null || microphoneClip != null)
                return;
            string device = string.IsNullOrEmpty(microphoneDevice) ? null : microphoneDevice;
            int rate = session.SampleRate;
            microphoneClip = Microphone.Start(device, true, MicrophoneSeconds, rate);
            if (microphoneClip == null)
            {
                ReportError("the microphone could not be started");
                return;
            }
            // 10 ms blocks divide the looping clip evenly, so no read straddles its end.
            microphoneBlock = new float[microphoneClip.frequency / 100 * microphoneClip.channels];
            microphoneReadPosition = 0;
        }

        public void StopMicrophone()
        {
            if (microphoneClip == null)
                return;
            PumpMicrophone();
            Microphone.End(string.IsNullOrEmpty(microphoneDevice) ? null : microphoneDevice);
            microphoneClip = null;
            EndUtterance();
        }

        void PumpMicrophone()
        {
            if (microphoneClip == null || session == null)
                return;
            string device = string.IsNullOrEmpty(microphoneDevice) ? null : microphoneDevice;
            int recorded = Microphone.GetPosition(device);
            int total = microphoneClip.samples;
            int blockFrames = microphoneBlock.Length / microphoneClip.channels;
            int available = (recorded - microphoneReadPosition + total) % total;
            while (available >= blockFrames)
            {
                microphoneClip.GetData(microphoneBlock, microphoneReadPosition);
                voiceChunker.Write(microphoneBlock, 0, blockFrames, microphoneClip.channels, microphoneClip.frequency,
                                   session);
                microphoneReadPosition = (microphoneReadPosition + blockFrames) % total;
                available -= blockFrames;
            }
        }

        // --- control ---

        public void SetEmotion(string emotion, float intensity = 1f)
        {
            if (session != null)
                session.SetEmotion(emotion, intensity);
        }

        public void PlayAction(string preset)
        {
            if (session != null)
                session.PlayAction(preset);
        }

        /// <summary>An emotion from the block that starts nearest to voice sample <paramref name="atVoiceSample"/>,
        /// for TTS word timings: <see cref="VoiceSamplesSent"/> before speaking the line, plus the word's offset in
        /// it in samples at the session's rate. An interrupt cancels the events not reached yet.</summary>
        public void SetEmotionAtVoiceSample(string emotion, float intensity, ulong atVoiceSample)
        {
            if (session != null)
                session.SetEmotion(emotion, intensity, atVoiceSample);
        }

        /// <summary>An action from the block that starts nearest to voice sample <paramref name="atVoiceSample"/> (see
        /// <see cref="SetEmotionAtVoiceSample"/>).</summary>
        public void PlayActionAtVoiceSample(string preset, ulong atVoiceSample)
        {
            if (session != null)
                session.PlayAction(preset, atVoiceSample);
        }

        /// <summary>Stop talking now; onInterrupted follows with where the new video starts.</summary>
        public void Interrupt()
        {
            if (session == null)
                return;
            // Silence at once rather than when the answer comes (a block's compute later): the voice not yet
            // handed to the output is dropped and the face holds its frame until the new video arrives.
            echo.DiscardFrom(echo.PlayedUntil);
            session.Interrupt();
        }

        /// <summary>True while the player speaks: the NPC listens instead of idling.</summary>
        public void SetListening(bool listening)
        {
            if (session != null)
                session.SetListening(listening);
        }

        // --- the main-thread loop ---

        void Update()
        {
            if (session == null)
            {
                if (restartAt >= 0 && Time.unscaledTime >= restartAt)
                    StartSession(true);
                return;
            }
            PumpMicrophone();
            PollEvents();
            if (session == null)
                return;
            PollEchoedVoice();
            ShowDueFrame();
            RefreshStats();
            if (closeDeadline >= 0 && Time.unscaledTime >= closeDeadline)
                DisposeSession();
        }

        void PollEvents()
        {
            for (int i = 0; i < MaxEventsPerUpdate && session != null; i++)
            {
                AvatarSessionEvent polled = session.PollEvent();
                if (polled == null)
                    return;
                switch (polled.Type)
                {
                    case SessionEventType.State:
                        if (polled.State == SessionState.Live)
                            restartPolicy.Reset();
                        onSessionStateChanged.Invoke(polled.State);
                        break;
                    case SessionEventType.Server:
                        if (polled.ServerCode == ServerEventCode.UtteranceComplete)
                            onUtteranceComplete.Invoke();
                        else
                            onServerEvent.Invoke(polled.ServerCode, polled.Text);
                        break;
                    case SessionEventType.InterruptAck:
                        // The core dropped what it still held; drop what was already polled for playback.
                        echo.DiscardFrom(polled.ReplaceFromPts);
                        onInterrupted.Invoke(polled.ReplaceFromPts);
                        break;
                    case SessionEventType.Ended:
                        OnEnded(polled);
                        return;
                }
            }
        }

        void OnEnded(AvatarSessionEvent ended)
        {
            LastResumeToken = ended.ResumeToken;
            var status = ended.EndStatus;
            string message = status == GrpcStatusCode.Ok ? null : status + ": " + ended.Text;
            bool closing = closeDeadline >= 0;
            DisposeSession();
            onSessionStateChanged.Invoke(SessionState.Closed);
            if (message == null)
                return;
            ReportError("the session of NPC " + npcId + " ended: " + message);
            double delay;
            if (!closing && restartAfterErrors && restartPolicy.TryNextDelay(status, out delay))
                restartAt = Time.unscaledTime + (float)delay;
        }

        void PollEchoedVoice()
        {
            for (int i = 0; i < MaxAudioPollsPerUpdate; i++)
            {
                int count;
                ulong start;
                if (session.PollAudio(echoBuffer, out count, out start) != AvatarResult.Ok || count == 0)
                    return;
                echo.Enqueue(echoBuffer, count, start);
            }
        }

        void ShowDueFrame()
        {
            // Without a playing AudioSource nothing drains the echoed voice: let wall time play it silently.
            if (!echoSource.isPlaying || !echoSource.enabled)
                echo.Skip((int)(Time.unscaledDeltaTime * echo.SessionSampleRate));
            ulong heardUntil = clock.HeardUntil(echo.PlayedUntil);
            session.PlaybackProgress(heardUntil);
            if (session.PollDueFrame(heardUntil, frameBuffer) != AvatarResult.Ok)
                return;
            UploadFrame();
            clock.FrameShown(frameBuffer.Info.pts, heardUntil);
            shownFrames.Tick(Time.unscaledTime);
        }

        void UploadFrame()
        {
            if (frameTexture == null || frameTexture.width != frameBuffer.Width || frameTexture.height != frameBuffer.Height)
            {
                if (frameTexture != null)
                    Destroy(frameTexture);
                frameTexture = new Texture2D(frameBuffer.Width, frameBuffer.Height, TextureFormat.RGBA32, false);
                frameTexture.name = "NPC " + npcId;
                frameTexture.wrapMode = TextureWrapMode.Clamp;
                AttachTexture();
            }
            frameTexture.LoadRawTextureData(frameBuffer.Address, frameBuffer.ByteCount);
            frameTexture.Apply(false);
            if (targetRenderTexture != null)
                // The core's rows run top to bottom, Unity's bottom to top: flip while copying.
                Graphics.Blit(frameTexture, targetRenderTexture, new Vector2(1, -1), new Vector2(0, 1));
        }

        void AttachTexture()
        {
            // Flipped by the texture coordinates for the same reason as the Blit above.
            if (targetImage != null)
            {
                targetImage.texture = frameTexture;
                targetImage.uvRect = new Rect(0, 1, 1, -1);
            }
            if (targetRenderer != null)
            {
                Material material = targetRenderer.material;
                material.SetTexture(texturePropertyName, frameTexture);
                material.SetTextureScale(texturePropertyName, new Vector2(1, -1));
                material.SetTextureOffset(texturePropertyName, new Vector2(0, 1));
            }
        }

        void RefreshStats()
        {
            float now = Time.unscaledTime;
            if (now < nextStatsRefresh)
                return;
            nextStatsRefresh = now + StatsRefreshSeconds;
            double offset = clock.TakeMeanOffsetMs();
            if (!double.IsNaN(offset))
                lastAvOffsetMs = offset;
            if (session.GetStats(ref nativeStats) != AvatarResult.Ok)
                return;
            stats.State = (SessionState)nativeStats.state;
            stats.ShownFps = shownFrames.PerSecond(now);
            stats.GeneratedFps = nativeStats.generated_fps;
            stats.FirstFrameLatencyMs = nativeStats.first_frame_latency_ms;
            stats.AvOffsetMs = lastAvOffsetMs;
            stats.FramesReceived = nativeStats.frames_received;
            stats.FramesDropped = nativeStats.frames_dropped;
            stats.BufferedFrames = nativeStats.buffered_frames;
            stats.BufferedAudioMs = echo.BufferedSamples * 1000.0 / echo.SessionSampleRate;
            stats.Reconnects = nativeStats.reconnects;
            stats.PlayedUntil = clock.HeardUntil(echo.PlayedUntil);
        }

        void ReportError(string message)
        {
            Debug.LogWarning("[AvatarBackend] " + message);
            onError.Invoke(message);
        }

        // --- the audio thread ---

        void StartEchoOutput()
        {
            // OnAudioFilterRead runs only while the AudioSource plays: a silent looping clip keeps it playing, and
            // the filter replaces its samples with the echoed voice (spatialised like any source's).
            if (silentLoop == null)
                silentLoop = AudioClip.Create("NPC voice", outputSampleRate, 1, outputSampleRate, false);
            echoSource.clip = silentLoop;
            echoSource.loop = true;
            echoSource.Play();
        }

        void StopEchoOutput()
        {
            if (echoSource != null && echoSource.clip == silentLoop)
                echoSource.Stop();
        }

        void OnAudioFilterRead(float[] data, int channels)
        {
            EchoPlayback playing = echo;
            if (playing == null || session == null)
                return;
            playing.Read(data, channels, outputSampleRate);
        }
    }
}
