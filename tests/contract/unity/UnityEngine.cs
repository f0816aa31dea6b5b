// A stand-in for UnityEngine.dll: the public type names of Unity's `UnityEngine` namespace that a game
// script sees next to the generated contract types, declared (nearly) empty. It holds what the namespace check needs
// (names and kinds), not Unity's behaviour. It covers the core object model, audio, video, textures,
// animation and avatars, characters, events, time and networking names: every area a contract type name
// (Avatar..., Audio..., Video..., Character, Event..., Session..., Npc, Limits, ServerInfo, ...) could
// meet. A name added to the contract that exists in UnityEngine makes the probe script ambiguous (CS0104)
// only if the name is listed here, so add Unity types here when the contract grows into a new area.

namespace UnityEngine
{
    // Object model.
    public class Object { }
    public class Component : Object { }
    public class Behaviour : Component { }
    public class MonoBehaviour : Behaviour { }
    public class ScriptableObject : Object { }
    public sealed class GameObject : Object { }
    public class Transform : Component { }
    public sealed class Resources { }
    public sealed class TextAsset : Object { }
    public sealed class Application { }
    public sealed class Debug { public static void Log(object message) { } }
    public class Logger { }
    public enum LogType { Error, Assert, Warning, Log, Exception }
    public sealed class Time { }
    public sealed class Random { }
    public sealed class Mathf { }
    public sealed class JsonUtility { }
    public sealed class PlayerPrefs { }
    public sealed class SystemInfo { }
    public enum DeviceType { Unknown, Handheld, Console, Desktop }
    public sealed class Screen { }
    public struct Resolution { }
    public class Display { }
    public sealed class Camera : Behaviour { }
    public sealed class Light : Behaviour { }

    // Coroutines and async.
    public class YieldInstruction { }
    public sealed class Coroutine : YieldInstruction { }
    public sealed class WaitForSeconds : YieldInstruction { public WaitForSeconds(float seconds) { } }
    public class AsyncOperation : YieldInstruction { }
    public sealed class Awaitable { }

    // Maths and colours.
    public struct Vector2 { }
    public struct Vector3 { }
    public struct Vector4 { }
    public struct Quaternion { }
    public struct Matrix4x4 { }
    public struct Rect { }
    public struct Bounds { }
    public struct Color { }
    public struct Color32 { }
    public class Gradient { }

    // Audio.
    public sealed class AudioClip : Object { }
    public sealed class AudioSource : Behaviour { }
    public sealed class AudioListener : Behaviour { }
    public sealed class AudioSettings { }
    public struct AudioConfiguration { }
    public enum AudioType { UNKNOWN, OGGVORBIS, WAV, MPEG }
    public enum AudioDataLoadState { Unloaded, Loading, Loaded, Failed }
    public enum AudioClipLoadType { DecompressOnLoad, CompressedInMemory, Streaming }
    public enum AudioCompressionFormat { PCM, Vorbis, ADPCM, MP3 }
    public enum AudioSpeakerMode { Mono, Stereo, Quad }
    public enum AudioRolloffMode { Logarithmic, Linear, Custom }
    public enum AudioVelocityUpdateMode { Auto, Fixed, Dynamic }
    public sealed class AudioLowPassFilter : Behaviour { }
    public sealed class AudioReverbFilter : Behaviour { }
    public sealed class Microphone { }

    // Textures, images, rendering.
    public class Texture : Object { }
    public sealed class Texture2D : Texture { }
    public class RenderTexture : Texture { }
    public sealed class WebCamTexture : Texture { }
    public struct WebCamDevice { }
    public enum TextureFormat { RGB24 = 3, RGBA32 = 4 }
    public static class ImageConversion { }
    public sealed class Sprite : Object { }
    public sealed class Mesh : Object { }
    public class Material : Object { }
    public sealed class Shader : Object { }
    public sealed class Font : Object { }
    public struct CharacterInfo { }
    public struct FrameTiming { }
    public static class FrameTimingManager { }

    // Animation, avatars, characters.
    public sealed class Avatar : Object { }
    public sealed class AvatarMask : Object { }
    public class AvatarBuilder { }
    public enum AvatarTarget { Root, Body, LeftFoot, RightFoot, LeftHand, RightHand }
    public enum AvatarIKGoal { LeftFoot, RightFoot, LeftHand, RightHand }
    public enum AvatarIKHint { LeftKnee, RightKnee, LeftElbow, RightElbow }
    public enum HumanBodyBones { Hips, Head, Jaw }
    public struct HumanDescription { }
    public class Motion : Object { }
    public sealed class AnimationClip : Motion { }
    public sealed class Animation : Behaviour { }
    public class Animator : Behaviour { }
    public class RuntimeAnimatorController : Object { }
    public class AnimationCurve { }
    public struct Keyframe { }
    public class CharacterController : Component { }
    public class CharacterJoint : Component { }

    // Input, IMGUI and events.
    public sealed class Input { }
    public struct Touch { }
    public enum KeyCode { None = 0 }
    public sealed class Event { }
    public enum EventType { MouseDown = 0, Repaint = 7 }
    public enum EventModifiers { None = 0 }
    public class GUI { }
    public class GUILayout { }
    public class GUIContent { }
    public class Gizmos { }
    public sealed class Handheld { }

    // Networking and platform services.
    public sealed class Ping { }
    public enum NetworkReachability { NotReachable, ReachableViaCarrierDataNetwork, ReachableViaLocalAreaNetwork }
    public static class Social { }

    // Serialisation attributes.
    public sealed class SerializeField : System.Attribute { }
    public sealed class HeaderAttribute : System.Attribute { }
    public sealed class RangeAttribute : System.Attribute { }
    public sealed class TooltipAttribute : System.Attribute { }
}
