// The package's view of the C ABI, in the same line format that the C program generated from the header by
// test_unity_plugin_csharp.py prints, so the two can be compared line by line:
//   struct NAME size N          every struct of the Native namespace (AvbClientConfig -> avb_client_config)
//   field NAME.FIELD OFFSET     its fields, by offset
//   array NAME.FIELD LENGTH     the length of each fixed buffer as the decoding code uses it
//   const AVB_NAME VALUE        every constant (enum values, the ABI version)
//   function NAME PARAMETERS    every DllImport and its parameter count
using System;
using System.Linq;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;
using AvatarBackend.Client.Native;

namespace AvatarBackend.Client.Tests
{
    public static class AbiDump
    {
        public static int Run()
        {
            var nativeTypes = typeof(AvatarClientNative).Assembly.GetTypes()
                .Where(t => t.Namespace == "AvatarBackend.Client.Native");
            foreach (Type type in nativeTypes.Where(t => t.IsValueType && !t.IsEnum && t.Name.StartsWith("Avb"))
                                             .OrderBy(t => t.Name))
            {
                string name = SnakeCase(type.Name);
                Console.WriteLine("struct {0} size {1}", name, Marshal.SizeOf(type));
                var fields = type.GetFields(BindingFlags.Public | BindingFlags.Instance)
                    .OrderBy(f => (long)Marshal.OffsetOf(type, f.Name));
                foreach (FieldInfo field in fields)
                    Console.WriteLine("field {0}.{1} {2}", name, field.Name, (long)Marshal.OffsetOf(type, field.Name));
            }
            Console.WriteLine("array avb_event.values 4");
            Console.WriteLine("array avb_event.text {0}", AvbEvent.TextCapacity);
            Console.WriteLine("array avb_event.detail {0}", AvbEvent.DetailCapacity);

            Console.WriteLine("const AVB_ABI_VERSION {0}", AvatarClientNative.AbiVersion);
            DumpEnum(typeof(AvatarResult), "AVB_");
            DumpEnum(typeof(PixelFormat), "AVB_PIXELS_");
            DumpEnum(typeof(SessionEventType), "AVB_EVENT_");
            DumpEnum(typeof(SessionState), "AVB_STATE_");

            foreach (MethodInfo method in typeof(AvatarClientNative).GetMethods(BindingFlags.Public | BindingFlags.Static)
                                                                  .Where(m => m.GetCustomAttributes(typeof(DllImportAttribute), false).Any())
                                                                  .OrderBy(m => m.Name))
                Console.WriteLine("function {0} {1}", method.Name, method.GetParameters().Length);
            return 0;
        }

        static void DumpEnum(Type type, string prefix)
        {
            foreach (object value in Enum.GetValues(type))
            {
                // SessionState.None is the package's "no state yet"; the header has no name for it.
                if (type == typeof(SessionState) && (SessionState)value == SessionState.None)
                    continue;
                Console.WriteLine("const {0}{1} {2}", prefix, SnakeCase(value.ToString()).ToUpperInvariant(),
                                  Convert.ToInt64(value));
            }
        }

        static string SnakeCase(string name)
        {
            var snake = new StringBuilder();
            for (int i = 0; i < name.Length; i++)
            {
                if (char.IsUpper(name[i]) && i > 0)
                    snake.Append('_');
                snake.Append(char.ToLowerInvariant(name[i]));
            }
            return snake.ToString();
        }
    }
}
