// A stand-in for the part of UnityEditor the package's Editor assembly uses (see UnityEngine.cs beside it).
using System;

namespace UnityEditor
{
    public class Editor : UnityEngine.ScriptableObject
    {
        public UnityEngine.Object target { get { return null; } }
        public virtual void OnInspectorGUI() { }
        public bool DrawDefaultInspector() { return true; }
        public void Repaint() { }
    }

    [AttributeUsage(AttributeTargets.Class)]
    public sealed class CustomEditor : Attribute { public CustomEditor(Type inspectedType) { } }

    [AttributeUsage(AttributeTargets.Method)]
    public sealed class MenuItem : Attribute { public MenuItem(string itemName) { } }

    public enum MessageType { None = 0, Info = 1, Warning = 2, Error = 3 }

    public sealed class EditorGUILayout
    {
        public static void Space() { }
        public static void HelpBox(string message, MessageType type) { }
        public static void LabelField(string label, string label2, params UnityEngine.GUILayoutOption[] options) { }
    }

    public sealed class EditorApplication
    {
        public static bool isPlaying { get { return false; } }
    }
}
