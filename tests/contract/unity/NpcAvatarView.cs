// A Unity script as a game writes it: UnityEngine and the generated contract types imported side by side and
// used by their simple names, including UnityEngine's `Avatar`, which the old namespace "Avatar.V1" hid
// behind a namespace of the same name (error CS0118). tests/contract/test_csharp_unity_namespace.py
// compiles it at C# 7.2 (mono's mcs goes no further; Unity accepts 7.3 and later) against a stand-in
// UnityEngine.dll; it names the contract's types only, no members, so it also compiles against the
// stand-in contract types.
using System;
using System.Collections;
using System.Collections.Generic;
using UnityEngine;
using AvatarBackend.V1;

public class NpcAvatarView : MonoBehaviour
{
    // UnityEngine: the NPC's body in the scene.
    public Avatar rigAvatar;
    public Animator animator;
    public AudioSource voiceSource;
    public AudioClip voiceClip;
    public Texture2D faceTexture;

    // The contract: the conversation with the NPC.
    SessionConfig sessionConfig;
    AudioFormat audioFormat;
    VideoFormat videoFormat;
    Character character;
    Npc npc;
    ServerInfo serverInfo;
    Limits limits;
    readonly Queue<VideoFrame> pendingFrames = new Queue<VideoFrame>();
    readonly List<AudioEcho> echoedAudio = new List<AudioEcho>();
    AudioCodec audioCodec;
    VideoCodec videoCodec;
    EventCode lastEventCode;

    void Start()
    {
        sessionConfig = new SessionConfig();
        audioFormat = new AudioFormat();
        videoFormat = new VideoFormat();
        audioCodec = default(AudioCodec);
        videoCodec = default(VideoCodec);
        Debug.Log(typeof(Avatar).FullName + " drives " + typeof(SessionConfig).FullName);
    }

    IEnumerator PlayFrames()
    {
        while (pendingFrames.Count > 0)
        {
            VideoFrame frame = pendingFrames.Dequeue();
            yield return new WaitForSeconds(0.05f);
        }
    }

    void OnSessionEvent(SessionEvent sessionEvent, Event imguiEvent)
    {
        Keyframe unityKeyframe = default(Keyframe);
        Type[] both = { typeof(UnityEngine.Object), typeof(ServerMessage), typeof(ClientMessage) };
    }
}
