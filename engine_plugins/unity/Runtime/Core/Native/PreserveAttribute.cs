// Keeps the P/Invoke layer from managed code stripping (IL2CPP strips what it sees no use of; the structs'
// fields are filled by native code and the handles' constructors are reached by reflection). Unity's linker
// honours any attribute named PreserveAttribute, whatever its namespace, so this engine-free assembly needs no
// UnityEngine.Scripting reference. link.xml at the package root says the same for projects that embed the
// package (Unity reads link.xml only from Assets/ and embedded packages).
using System;

namespace AvatarBackend.Client.Native
{
    [AttributeUsage(AttributeTargets.Class | AttributeTargets.Struct | AttributeTargets.Method |
                    AttributeTargets.Constructor | AttributeTargets.Field, Inherited = false)]
    public sealed class PreserveAttribute : Attribute { }
}
