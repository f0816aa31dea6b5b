// The UnityEvents an NpcAvatar raises (serializable subclasses, so they show in the inspector) and the numbers
// its stats overlay shows.
using System;
using UnityEngine.Events;

namespace AvatarBackend.Client
{
    [Serializable]
    public sealed class SessionStateEvent : UnityEvent<Native.SessionState> { }

    [Serializable]
    public sealed class AvatarErrorEvent : UnityEvent<string> { }

    /// <summary>A server event that does not end the session: its contract EventCode and message.</summary>
    [Serializable]
    public sealed class ServerEventEvent : UnityEvent<ServerEventCode, string> { }

    /// <summary>An interrupt was answered: the session-clock position the new (listening) video starts at.</summary>
    [Serializable]
    public sealed class InterruptedEvent : UnityEvent<ulong> { }

    /// <summary>The session rates the contract allows.</summary>
    public enum SessionSampleRate
    {
        Hz48000 = 48000,
        Hz16000 = 16000,
    }

    /// <summary>A snapshot of an NpcAvatar's session, refreshed a few times a second.</summary>
    public struct NpcAvatarStats
    {
        public Native.SessionState State;
        /// <summary>Frames shown per second.</summary>
        public double ShownFps;
        /// <summary>Frames the server generated per second (its latest SessionStats).</summary>
        public double GeneratedFps;
        /// <summary>Session open to first frame received.</summary>
        public double FirstFrameLatencyMs;
        /// <summary>Mean delay of the shown frames behind the heard voice; NaN when none was shown lately.</summary>
        public double AvOffsetMs;
        public ulong FramesReceived;
        /// <summary>Frames evicted from the core's buffer or skipped by the A/V clock.</summary>
        public ulong FramesDropped;
        public uint BufferedFrames;
        /// <summary>Echoed voice waiting to be played.</summary>
        public double BufferedAudioMs;
        public uint Reconnects;
        /// <summary>What the player has heard, on the session clock.</summary>
        public ulong PlayedUntil;
    }
}
