// The NPC's voice taken from an AudioSource (a TTS plugin's output, a dialogue clip played by the game): put
// this on the AudioSource's GameObject. OnAudioFilterRead runs on the audio thread with what the source plays;
// it is pushed to the NPC's session at real-time pace, and by default silenced, because the player hears the
// voice back from the NPC in sync with its face.
using System;
using UnityEngine;

namespace AvatarBackend.Client
{
    [AddComponentMenu("Avatar Backend/NPC Voice Capture")]
    [RequireComponent(typeof(AudioSource))]
    public sealed class NpcVoiceCapture : MonoBehaviour
    {
        [Tooltip("The NPC that speaks with this voice")]
        public NpcAvatar avatar;
        [Tooltip("Silence this source: the voice is heard from the NPC instead, in sync with its face")]
        public bool muteOriginal = true;

        int outputSampleRate;
        VoiceChunker chunker;       // used by the audio thread only
        volatile bool endRequested;

        void OnEnable()
        {
            outputSampleRate = AudioSettings.outputSampleRate;
        }

        /// <summary>The utterance is over (e.g. the source stopped): flushed and ended on the audio thread, after
        /// the voice already captured.</summary>
        public void EndUtterance()
        {
            endRequested = true;
        }

        void OnAudioFilterRead(float[] data, int channels)
        {
            AvatarSession session = avatar != null ? avatar.Session : null;
            if (session != null)
            {
                if (chunker == null || chunker.SessionSampleRate != session.SampleRate)
                    chunker = new VoiceChunker(session.SampleRate);
                chunker.Write(data, 0, data.Length / channels, channels, outputSampleRate, session);
                if (endRequested)
                {
                    endRequested = false;
                    chunker.Flush(session);
                    session.EndUtterance();
                }
            }
            if (muteOriginal)
                Array.Clear(data, 0, data.Length);
        }
    }
}
