// An on-screen box with an NpcAvatar's numbers: shown fps, generated fps, first-frame latency, A/V offset,
// dropped frames and buffers. The text is rebuilt twice a second, not every frame.
using UnityEngine;

namespace AvatarBackend.Client
{
    [AddComponentMenu("Avatar Backend/NPC Avatar Stats Overlay")]
    public sealed class NpcAvatarStatsOverlay : MonoBehaviour
    {
        public NpcAvatar avatar;
        public Vector2 screenPosition = new Vector2(10, 10);
        public Vector2 size = new Vector2(300, 150);

        const float RefreshSeconds = 0.5f;
        string text = "";
        float nextRefresh;

        void Update()
        {
            if (avatar == null || Time.unscaledTime < nextRefresh)
                return;
            nextRefresh = Time.unscaledTime + RefreshSeconds;
            NpcAvatarStats stats = avatar.Stats;
            text = string.Format(
                "NPC {0}: {1}\nfps shown {2:0.0} / generated {3:0.0}\nfirst frame {4:0} ms\n" +
                "A/V offset {5}\nframes received {6}, dropped {7}, buffered {8}\n" +
                "echoed voice buffered {9:0} ms\nreconnects {10}",
                avatar.npcId, stats.State, stats.ShownFps, stats.GeneratedFps, stats.FirstFrameLatencyMs,
                double.IsNaN(stats.AvOffsetMs) ? "-" : stats.AvOffsetMs.ToString("0.0") + " ms",
                stats.FramesReceived, stats.FramesDropped, stats.BufferedFrames, stats.BufferedAudioMs,
                stats.Reconnects);
        }

        void OnGUI()
        {
            if (avatar != null)
                GUI.Box(new Rect(screenPosition.x, screenPosition.y, size.x, size.y), text);
        }
    }
}
