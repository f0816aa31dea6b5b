// A stand-in for the Unity assemblies the package's Runtime, Editor and Samples~ compile against
// (UnityEngine, UnityEngine.UI, UnityEditor): the types and members they use, with Unity's signatures and no
// behaviour. It lets CI compile the MonoBehaviour glue with mono's mcs, which proves the glue names only
// members that exist with these signatures and stays within C# 7.2; it cannot prove what Unity does with them.
// When the package uses a new Unity member, add it here with Unity's exact signature (docs.unity3d.com).
using System;

namespace UnityEngine
{
    public class Object
    {
        public string name { get; set; }
        public static void Destroy(Object obj) { }
        public static implicit operator bool(Object exists) { return !ReferenceEquals(exists, null); }
    }

    public class Component : Object
    {
        public GameObject gameObject { get { return null; } }
        public T GetComponent<T>() { return default(T); }
    }

    public class Behaviour : Component { public bool enabled { get; set; } }
    public class MonoBehaviour : Behaviour { }
    public sealed class GameObject : Object { }
    public class ScriptableObject : Object { }

    public struct Vector2
    {
        public float x, y;
        public Vector2(float x, float y) { this.x = x; this.y = y; }
    }

    public struct Rect
    {
        public Rect(float x, float y, float width, float height) { }
    }

    public static class Mathf
    {
        public static int Max(int a, int b) { return a > b ? a : b; }
    }

    public static class Time
    {
        public static float unscaledTime { get { return 0; } }
        public static float unscaledDeltaTime { get { return 0; } }
    }

    public static class Debug
    {
        public static void Log(object message) { }
        public static void LogWarning(object message) { }
        public static void LogError(object message) { }
    }

    public static class Input
    {
        public static bool GetKeyDown(KeyCode key) { return false; }
        public static bool GetKeyUp(KeyCode key) { return false; }
    }

    public enum KeyCode { None = 0, I = 105, L = 108, T = 116 }

    // Audio.
    public sealed class AudioClip : Object
    {
        public int samples { get { return 0; } }
        public int channels { get { return 0; } }
        public int frequency { get { return 0; } }
        public bool GetData(float[] data, int offsetSamples) { return false; }
        public static AudioClip Create(string name, int lengthSamples, int channels, int frequency, bool stream)
        {
            return null;
        }
    }

    public sealed class AudioSource : Behaviour
    {
        public AudioClip clip { get; set; }
        public bool loop { get; set; }
        public bool isPlaying { get { return false; } }
        public void Play() { }
        public void Stop() { }
    }

    public sealed class AudioSettings
    {
        public static int outputSampleRate { get { return 48000; } }
        public static void GetDSPBufferSize(out int bufferLength, out int numBuffers)
        {
            bufferLength = 1024;
            numBuffers = 4;
        }
    }

    public sealed class Microphone
    {
        public static AudioClip Start(string deviceName, bool loop, int lengthSec, int frequency) { return null; }
        public static void End(string deviceName) { }
        public static int GetPosition(string deviceName) { return 0; }
    }

    // Textures and rendering.
    public class Texture : Object
    {
        public virtual int width { get { return 0; } set { } }
        public virtual int height { get { return 0; } set { } }
        public TextureWrapMode wrapMode { get; set; }
    }

    public enum TextureFormat { RGB24 = 3, RGBA32 = 4 }
    public enum TextureWrapMode { Repeat = 0, Clamp = 1 }

    public sealed class Texture2D : Texture
    {
        public Texture2D(int width, int height, TextureFormat textureFormat, bool mipChain) { }
        public void LoadRawTextureData(IntPtr data, int size) { }
        public void LoadRawTextureData(byte[] data) { }
        public void Apply(bool updateMipmaps) { }
    }

    public class RenderTexture : Texture { }

    public class Material : Object
    {
        public void SetTexture(string name, Texture value) { }
        public void SetTextureScale(string name, Vector2 value) { }
        public void SetTextureOffset(string name, Vector2 value) { }
    }

    public class Renderer : Component { public Material material { get; set; } }

    public sealed class Graphics
    {
        public static void Blit(Texture source, RenderTexture dest, Vector2 scale, Vector2 offset) { }
    }

    public class GUI
    {
        public static void Box(Rect position, string text) { }
    }

    public class GUILayout
    {
        public static bool Button(string text, params GUILayoutOption[] options) { return false; }
    }

    public sealed class GUILayoutOption { }

    // Attributes.
    [AttributeUsage(AttributeTargets.Field)]
    public sealed class SerializeField : Attribute { }
    [AttributeUsage(AttributeTargets.Field, AllowMultiple = true)]
    public class HeaderAttribute : Attribute { public HeaderAttribute(string header) { } }
    [AttributeUsage(AttributeTargets.Field)]
    public class TooltipAttribute : Attribute { public TooltipAttribute(string tooltip) { } }
    [AttributeUsage(AttributeTargets.Field)]
    public sealed class MinAttribute : Attribute { public MinAttribute(float min) { } }
    [AttributeUsage(AttributeTargets.Class)]
    public sealed class AddComponentMenu : Attribute { public AddComponentMenu(string menuName) { } }
    [AttributeUsage(AttributeTargets.Class)]
    public sealed class DisallowMultipleComponent : Attribute { }
    [AttributeUsage(AttributeTargets.Class, AllowMultiple = true)]
    public sealed class RequireComponent : Attribute { public RequireComponent(Type requiredComponent) { } }
}

namespace UnityEngine.Events
{
    public abstract class UnityEventBase { }

    public class UnityEvent : UnityEventBase
    {
        public void AddListener(UnityAction call) { }
        public void Invoke() { }
    }

    public abstract class UnityEvent<T0> : UnityEventBase
    {
        public void AddListener(UnityAction<T0> call) { }
        public void Invoke(T0 arg0) { }
    }

    public abstract class UnityEvent<T0, T1> : UnityEventBase
    {
        public void AddListener(UnityAction<T0, T1> call) { }
        public void Invoke(T0 arg0, T1 arg1) { }
    }

    public delegate void UnityAction();
    public delegate void UnityAction<T0>(T0 arg0);
    public delegate void UnityAction<T0, T1>(T0 arg0, T1 arg1);
}

namespace UnityEngine.UI
{
    public class Graphic : Behaviour { }
    public class MaskableGraphic : Graphic { }

    public class RawImage : MaskableGraphic
    {
        public Texture texture { get; set; }
        public Rect uvRect { get; set; }
    }
}
