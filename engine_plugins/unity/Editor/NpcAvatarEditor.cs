// The NpcAvatar inspector: whether the native library loads (the most common setup problem) and the live
// numbers of the session in play mode.
using System;
using AvatarBackend.Client.Native;
using UnityEditor;
using UnityEngine;

namespace AvatarBackend.Client.EditorTools
{
    [CustomEditor(typeof(NpcAvatar))]
    public sealed class NpcAvatarEditor : UnityEditor.Editor
    {
        string nativeLibraryStatus;

        public override void OnInspectorGUI()
        {
            DrawDefaultInspector();
            EditorGUILayout.Space();
            if (GUILayout.Button("Check native library"))
                nativeLibraryStatus = CheckNativeLibrary();
            if (!string.IsNullOrEmpty(nativeLibraryStatus))
                EditorGUILayout.HelpBox(nativeLibraryStatus, nativeLibraryStatus.StartsWith("OK")
                    ? MessageType.Info : MessageType.Error);
            var avatar = (NpcAvatar)target;
            if (EditorApplication.isPlaying && avatar.Session != null)
            {
                NpcAvatarStats stats = avatar.Stats;
                EditorGUILayout.LabelField("State", stats.State.ToString());
                EditorGUILayout.LabelField("Frames received / dropped", stats.FramesReceived + " / " + stats.FramesDropped);
                EditorGUILayout.LabelField("A/V offset (ms)", double.IsNaN(stats.AvOffsetMs) ? "-" : stats.AvOffsetMs.ToString("0.0"));
                Repaint();
            }
        }

        [MenuItem("Tools/Avatar Backend/Check Native Library")]
        static void CheckNativeLibraryMenu()
        {
            Debug.Log("[AvatarBackend] " + CheckNativeLibrary());
        }

        static string CheckNativeLibrary()
        {
            try
            {
                uint version = AvatarClient.NativeAbiVersion;
                return version == AvatarClientNative.AbiVersion
                    ? "OK: avatar_client loaded, ABI version " + version
                    : "avatar_client has ABI version " + version + ", this package expects " + AvatarClientNative.AbiVersion;
            }
            catch (DllNotFoundException error)
            {
                return "avatar_client was not found for this editor's platform (see Plugins/README.md): " + error.Message;
            }
            catch (EntryPointNotFoundException error)
            {
                return "a library named avatar_client loaded but is not the avatar backend's core: " + error.Message;
            }
        }
    }
}
