// The reused pixel buffer that decoded frames are polled into. It is pinned for its whole life so an engine
// can upload straight from it (Texture2D.LoadRawTextureData(IntPtr, int)) with no per-frame managed
// allocation; it is replaced only when a larger frame arrives.
using System;
using System.Runtime.InteropServices;
using AvatarBackend.Client.Native;

namespace AvatarBackend.Client
{
    public sealed class FrameBuffer : IDisposable
    {
        /// <summary>Polls give up after this many growth steps (each at least quadruples the buffer).</summary>
        public const int MaxGrowthSteps = 8;
        /// <summary>No frame is bigger than 4096 x 4096 RGBA.</summary>
        public const int MaxBytes = 4096 * 4096 * 4;

        GCHandle pin;

        /// <summary>A buffer for frames of width x height; 0 x 0 starts small and grows to the first frame.</summary>
        public FrameBuffer(PixelFormat format, int width, int height)
        {
            Format = format;
            int bytes = width > 0 && height > 0 ? width * height * BytesPerPixel : 256 * 256 * BytesPerPixel;
            Allocate(Math.Min(bytes, MaxBytes));
        }

        public PixelFormat Format { get; private set; }
        public int BytesPerPixel { get { return Format == PixelFormat.Rgba ? 4 : 3; } }
        /// <summary>Capacity; the latest frame is its first <see cref="ByteCount"/> bytes, rows top to bottom.</summary>
        public byte[] Pixels { get; private set; }
        /// <summary>The pinned address of <see cref="Pixels"/>.</summary>
        public IntPtr Address { get { return pin.AddrOfPinnedObject(); } }
        /// <summary>The latest polled frame; its width and height are 0 before the first.</summary>
        public AvbFrameInfo Info { get; private set; }
        public int Width { get { return (int)Info.width; } }
        public int Height { get { return (int)Info.height; } }
        public int ByteCount { get { return Width * Height * BytesPerPixel; } }
        /// <summary>Frames polled into this buffer so far.</summary>
        public long FramesPolled { get; private set; }

        internal void Accept(AvbFrameInfo info)
        {
            Info = info;
            FramesPolled++;
        }

        /// <summary>After AVB_BUFFER_TOO_SMALL: room for the frame when the core said its size, else four times
        /// the room. False when no buffer may be that big.</summary>
        internal bool Grow(AvbFrameInfo info)
        {
            long needed = (long)info.width * info.height * BytesPerPixel;
            long next = needed > Pixels.Length ? needed : (long)Pixels.Length * 4;
            if (Pixels.Length >= MaxBytes)
                return false;
            Allocate((int)Math.Min(next, MaxBytes));
            return true;
        }

        void Allocate(int bytes)
        {
            if (pin.IsAllocated)
                pin.Free();
            Pixels = new byte[bytes];
            pin = GCHandle.Alloc(Pixels, GCHandleType.Pinned);
        }

        public void Dispose()
        {
            if (pin.IsAllocated)
                pin.Free();
        }
    }
}
