// Quick start: an NPC that says a clip when the player presses T, listens while the player holds L, and stops
// talking on I. Put it on the GameObject that has the NpcAvatar.
using AvatarBackend.Client.Native;
using UnityEngine;

namespace AvatarBackend.Client.Samples
{
    [RequireComponent(typeof(NpcAvatar))]
    public sealed class TalkingNpc : MonoBehaviour
    {
        public AudioClip line;
        NpcAvatar npc;

        void Awake()
        {
            npc = GetComponent<NpcAvatar>();
            npc.onSessionStateChanged.AddListener(state => Debug.Log("NPC session: " + state));
            npc.onUtteranceComplete.AddListener(() => npc.SetEmotion("happy", 0.7f));
            npc.onError.AddListener(message => Debug.LogWarning(message));
        }

        void Update()
        {
            if (Input.GetKeyDown(KeyCode.T) && npc.Session != null && npc.Session.State == SessionState.Live)
                npc.Speak(line);
            if (Input.GetKeyDown(KeyCode.L))
                npc.SetListening(true);
            if (Input.GetKeyUp(KeyCode.L))
                npc.SetListening(false);
            if (Input.GetKeyDown(KeyCode.I))
                npc.Interrupt();
        }
    }
}
