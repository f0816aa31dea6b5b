// One conversation through a native core, as NpcAvatar drives it minus Unity: the speech goes in through
// VoiceChunker at TTS pace, the echoed voice is played out on the wall clock by EchoPlayback (no audio device
// in CI), and each frame is taken when the A/V clock says it is due. With "interrupt", a second, longer
// utterance is cut off once its first speaking frame is shown, and what follows must be the listening video.
// Prints "key value" lines for test_unity_plugin_native_session.py to judge.
//   mono CoreTests.exe session ADDRESS NPC_ID CHARACTER_ID PCM_FILE [timeout=SECONDS] [interrupt]
// PCM_FILE: mono little-endian int16 at 48 kHz.
using System;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Linq;
using AvatarBackend.Client.Native;

namespace AvatarBackend.Client.Tests
{
    public sealed class NativeSessionRun
    {
        const int SampleRate = 48000;

        readonly AvatarSession session;
        readonly FrameBuffer frame;
        readonly EchoPlayback echo = new EchoPlayback(SampleRate, 120);
        readonly short[] echoed = new short[SampleRate / 10];
        readonly Stopwatch clock = Stopwatch.StartNew();
        readonly double deadline;
        double playedSeconds;

        // What happened, for the report.
        bool live;
        int utterancesComplete;
        long echoedSamples, shown, speakingShown, shownBeforeDue, outOfOrder, pixelSum;
        ulong lastIndex;
        double firstSpeakingSeconds = -1;
        AvatarSessionEvent interruptAck;
        string endText = "";

        NativeSessionRun(AvatarSession session, FrameBuffer frame, double timeoutSeconds)
        {
            this.session = session;
            this.frame = frame;
            deadline = timeoutSeconds;
        }

        bool TimeLeft { get { return clock.Elapsed.TotalSeconds < deadline && session.State != SessionState.Closed; } }

        public static int Run(string[] args)
        {
            string address = args[1], npcId = args[2], characterId = args[3];
            byte[] bytes = File.ReadAllBytes(args[4]);
            string timeout = args.Skip(5).FirstOrDefault(a => a.StartsWith("timeout="));
            double timeoutSeconds = timeout == null ? 240 : double.Parse(timeout.Substring(8), CultureInfo.InvariantCulture);
            bool interrupt = args.Skip(5).Contains("interrupt");
            var speech = new float[bytes.Length / 2];
            for (int i = 0; i < speech.Length; i++)
                speech[i] = BitConverter.ToInt16(bytes, 2 * i) / 32768f;

            AvatarClient.CheckNativeAbi();
            Console.WriteLine("abi_version {0}", AvatarClient.NativeAbiVersion);
            using (var client = new AvatarClient(new AvatarClientOptions { Target = address }))
            using (var session = client.OpenSession(new AvatarSessionOptions
            {
                NpcId = npcId, CharacterId = characterId, Width = 64, Height = 64, Fps = 20, SampleRate = SampleRate,
            }))
            using (var frame = new FrameBuffer(PixelFormat.Rgba, 0, 0))
                new NativeSessionRun(session, frame, timeoutSeconds).Converse(speech, interrupt);
            return 0;
        }

        void Converse(float[] speech, bool interrupt)
        {
            while (TimeLeft && !live)
                Pump();
            Console.WriteLine("live {0}", live ? 1 : 0);

            // 1. One utterance, sent as fast as TTS would; the NPC talks, then idles.
            Speak(speech, 1);
            Console.WriteLine("voice_samples_sent {0}", session.VoiceSamplesSent);
            bool silentAfterSpeech = false;
            while (TimeLeft && !(utterancesComplete >= 1 && silentAfterSpeech))
            {
                bool? speaking = Pump();
                if (speaking == false && speakingShown > 0)
                    silentAfterSpeech = true;
            }
            Console.WriteLine("utterance_complete {0}", utterancesComplete >= 1 ? 1 : 0);
            Console.WriteLine("silent_after_speech {0}", silentAfterSpeech ? 1 : 0);
            Console.WriteLine("speaking_frames_shown {0}", speakingShown);
            Console.WriteLine("first_speaking_frame_shown_s {0:0.000}", firstSpeakingSeconds);
            Console.WriteLine("speaking_pixel_sum {0}", pixelSum);

            if (interrupt)
                InterruptALongUtterance(speech);

            var stats = new AvbStats();
            session.GetStats(ref stats);
            Console.WriteLine("frames_shown {0}", shown);
            Console.WriteLine("frames_shown_before_due {0}", shownBeforeDue);
            Console.WriteLine("frames_out_of_order {0}", outOfOrder);
            Console.WriteLine("frame_size {0}x{1}", frame.Width, frame.Height);
            Console.WriteLine("echoed_samples {0}", echoedSamples);
            Console.WriteLine("speech_samples {0}", speech.Length);
            Console.WriteLine("frames_received {0}", stats.frames_received);
            Console.WriteLine("first_frame_latency_ms {0}", stats.first_frame_latency_ms);

            // 3. A normal end: the server saves the NPC and the core passes its resume token on.
            Console.WriteLine("close {0}", session.Close());
            double closeBy = clock.Elapsed.TotalSeconds + 60;
            while (session.State != SessionState.Closed && clock.Elapsed.TotalSeconds < closeBy)
                Pump();
            Console.WriteLine("end_status {0}", session.EndStatus);
            Console.WriteLine("resume_token_length {0}", (session.ResumeToken ?? "").Length);
            Console.WriteLine("end_text {0}", endText.Replace('\n', ' '));
        }

        void InterruptALongUtterance(float[] speech)
        {
            // 2. A long utterance, cut off once its first speaking frame is shown.
            int speakingBefore = (int)speakingShown;
            Speak(speech, 4);
            while (TimeLeft && speakingShown == speakingBefore)
                Pump();
            ulong heardAtInterrupt = echo.PlayedUntil;
            echo.DiscardFrom(heardAtInterrupt);  // as NpcAvatar.Interrupt: silent at once
            Console.WriteLine("interrupt {0}", session.Interrupt());
            Console.WriteLine("heard_at_interrupt {0}", heardAtInterrupt);
            while (TimeLeft && interruptAck == null)
                Pump();
            if (interruptAck == null)
                return;
            Console.WriteLine("interrupt_ack {0} {1} {2} {3}", interruptAck.NextFrameIndex, interruptAck.ReplaceFromPts,
                              interruptAck.DroppedSamples, interruptAck.UnheardSamples);
            long speakingAfter = 0, silentAfter = 0;
            ulong firstPtsAfter = 0;
            while (TimeLeft && silentAfter < 10)
            {
                bool? speaking = Pump();
                if (speaking == null || frame.Info.index < interruptAck.NextFrameIndex)
                    continue;
                if (speakingAfter + silentAfter == 0)
                    firstPtsAfter = frame.Info.pts;
                if (speaking.Value)
                    speakingAfter++;
                else
                    silentAfter++;
            }
            Console.WriteLine("speaking_frames_after_interrupt {0}", speakingAfter);
            Console.WriteLine("silent_frames_after_interrupt {0}", silentAfter);
            Console.WriteLine("first_pts_after_interrupt {0}", firstPtsAfter);
        }

        void Speak(float[] speech, int times)
        {
            var chunker = new VoiceChunker(SampleRate);
            for (int i = 0; i < times; i++)
                chunker.Write(speech, 0, speech.Length, 1, SampleRate, session);
            chunker.Flush(session);
            Console.WriteLine("push_result {0}", chunker.LastPushResult);
            Console.WriteLine("end_utterance {0}", session.EndUtterance());
        }

        /// <summary>One pass of what NpcAvatar.Update does; returns whether the frame shown now is speaking, or
        /// null when none was due.</summary>
        bool? Pump()
        {
            AvatarSessionEvent polled;
            while ((polled = session.PollEvent()) != null)
            {
                Console.WriteLine("event {0}", polled);
                if (polled.Type == SessionEventType.State && polled.State == SessionState.Live)
                    live = true;
                else if (polled.Type == SessionEventType.Server && polled.ServerCode == ServerEventCode.UtteranceComplete)
                    utterancesComplete++;
                else if (polled.Type == SessionEventType.InterruptAck)
                {
                    interruptAck = polled;
                    echo.DiscardFrom(polled.ReplaceFromPts);
                }
                else if (polled.Type == SessionEventType.Ended)
                    endText = polled.Text;
            }
            if (session.State == SessionState.Closed)
                return null;
            int count;
            ulong start;
            while (session.PollAudio(echoed, out count, out start) == AvatarResult.Ok && count > 0)
            {
                echo.Enqueue(echoed, count, start);
                echoedSamples += count;
            }
            double now = clock.Elapsed.TotalSeconds;
            echo.Skip((int)((now - playedSeconds) * SampleRate));
            playedSeconds = now;
            ulong heardUntil = echo.PlayedUntil;
            session.PlaybackProgress(heardUntil);
            if (session.PollDueFrame(heardUntil, frame) != AvatarResult.Ok)
            {
                System.Threading.Thread.Sleep(5);
                return null;
            }
            shown++;
            if (frame.Info.pts > heardUntil)
                shownBeforeDue++;
            if (shown > 1 && frame.Info.index <= lastIndex)
                outOfOrder++;
            lastIndex = frame.Info.index;
            bool speaking = frame.Info.speaking != 0;
            if (speaking)
            {
                speakingShown++;
                if (firstSpeakingSeconds < 0)
                    firstSpeakingSeconds = now;
                for (int i = 0; i < frame.ByteCount; i += 97)
                    pixelSum += frame.Pixels[i];
            }
            return speaking;
        }
    }
}
