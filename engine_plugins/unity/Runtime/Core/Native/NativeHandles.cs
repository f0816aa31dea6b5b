// SafeHandles for avb_client and avb_session, and the UTF-8 strings handed to the core.
//
// avb_client_destroy also destroys the client's sessions, so a session destroyed after its client would be
// freed twice. Each SessionHandle therefore holds a reference on its ClientHandle (DangerousAddRef) until the
// session is destroyed: the client is freed last whatever order Dispose or the finalizers run in.
using System;
using System.Collections.Generic;
using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace AvatarBackend.Client.Native
{
    /// <summary>An avb_client*; releasing it calls avb_client_destroy.</summary>
    [Preserve]
    public sealed class ClientHandle : SafeHandleZeroOrMinusOneIsInvalid
    {
        [Preserve]
        public ClientHandle() : base(true) { }

        internal ClientHandle(IntPtr client) : base(true)
        {
            SetHandle(client);
        }

        protected override bool ReleaseHandle()
        {
            AvatarClientNative.avb_client_destroy(handle);
            return true;
        }
    }

    /// <summary>An avb_session*; releasing it calls avb_session_destroy, then lets its client go.</summary>
    [Preserve]
    public sealed class SessionHandle : SafeHandleZeroOrMinusOneIsInvalid
    {
        ClientHandle client;

        [Preserve]
        public SessionHandle() : base(true) { }

        internal SessionHandle(IntPtr session, ClientHandle client) : base(true)
        {
            bool added = false;
            client.DangerousAddRef(ref added);
            this.client = client;
            SetHandle(session);
        }

        protected override bool ReleaseHandle()
        {
            AvatarClientNative.avb_session_destroy(handle);
            if (client != null)
            {
                client.DangerousRelease();
                client = null;
            }
            return true;
        }
    }

    /// <summary>Strings for the config structs: NUL-terminated UTF-8 in unmanaged memory, freed on Dispose
    /// (the core copies them before the call returns).</summary>
    public sealed class NativeUtf8Strings : IDisposable
    {
        readonly List<IntPtr> allocations = new List<IntPtr>();

        /// <summary>A pointer to <paramref name="value"/> as UTF-8; IntPtr.Zero (the header's NULL) for null.</summary>
        public IntPtr Add(string value)
        {
            if (value == null)
                return IntPtr.Zero;
            byte[] bytes = Utf8.NullTerminated(value);
            IntPtr memory = Marshal.AllocHGlobal(bytes.Length);
            allocations.Add(memory);
            Marshal.Copy(bytes, 0, memory, bytes.Length);
            return memory;
        }

        public void Dispose()
        {
            foreach (IntPtr memory in allocations)
                Marshal.FreeHGlobal(memory);
            allocations.Clear();
        }
    }

    /// <summary>UTF-8 conversions at the C boundary.</summary>
    public static class Utf8
    {
        static readonly UTF8Encoding Encoding = new UTF8Encoding(false);

        public static byte[] NullTerminated(string value)
        {
            byte[] bytes = new byte[Encoding.GetByteCount(value) + 1];
            Encoding.GetBytes(value, 0, value.Length, bytes, 0);
            return bytes;
        }

        /// <summary>The text before the first NUL of a C char buffer.</summary>
        public static unsafe string FromNullTerminated(byte* buffer, int capacity)
        {
            int length = 0;
            while (length < capacity && buffer[length] != 0)
                length++;
            return length == 0 ? string.Empty : new string((sbyte*)buffer, 0, length, Encoding);
        }

        public static string FromNullTerminated(byte[] buffer, int capacity)
        {
            int length = 0;
            while (length < capacity && length < buffer.Length && buffer[length] != 0)
                length++;
            return Encoding.GetString(buffer, 0, length);
        }
    }
}
