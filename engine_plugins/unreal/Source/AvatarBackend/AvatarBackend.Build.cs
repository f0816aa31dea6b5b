// The AvatarBackend module: a thin Unreal layer over the native client core's C ABI
// (ThirdParty/AvatarClient/include/avatar_backend/avatar_client.h). The core (gRPC, Opus, JPEG, reconnect, the
// A/V clock) is a prebuilt library per platform under ThirdParty/AvatarClient/lib (see the README there); it
// exports only avb_* functions, so the engine's own protobuf, gRPC or libopus never clash with its copies.
using System.IO;
using UnrealBuildTool;

public class AvatarBackend : ModuleRules
{
	public AvatarBackend(ReadOnlyTargetRules Target) : base(Target)
	{
		PCHUsage = PCHUsageMode.UseExplicitOrSharedPCHs;

		PublicDependencyModuleNames.AddRange(new string[] { "Core", "CoreUObject", "Engine" });
		// AudioCaptureCore: the microphone (Audio::FAudioCapture); AudioMixerCore: the procedural echo wave's format;
		// Projects: finding the plugin's folder to load the library from.
		PrivateDependencyModuleNames.AddRange(new string[] { "AudioCaptureCore", "AudioMixerCore", "Projects", "RenderCore", "RHI" });

		string ThirdPartyDir = Path.GetFullPath(Path.Combine(ModuleDirectory, "..", "..", "ThirdParty", "AvatarClient"));
		PublicSystemIncludePaths.Add(Path.Combine(ThirdPartyDir, "include"));
		string LibDir = Path.Combine(ThirdPartyDir, "lib");

		if (Target.Platform == UnrealTargetPlatform.Win64)
		{
			string PlatformDir = Path.Combine(LibDir, "Win64");
			PublicAdditionalLibraries.Add(Path.Combine(PlatformDir, "avatar_client.lib"));
			// Loaded from the plugin's binaries folder at module startup (FAvatarBackendModule), so the game
			// need not put the DLL next to its executable.
			PublicDelayLoadDLLs.Add("avatar_client.dll");
			RuntimeDependencies.Add("$(PluginDir)/Binaries/ThirdParty/AvatarClient/Win64/avatar_client.dll",
				Path.Combine(PlatformDir, "avatar_client.dll"));
		}
		else if (Target.Platform == UnrealTargetPlatform.Linux)
		{
			string PlatformDir = Path.Combine(LibDir, "Linux", "x86_64-unknown-linux-gnu");
			PublicAdditionalLibraries.Add(Path.Combine(PlatformDir, "libavatar_client.so"));
			// The library's SONAME is libavatar_client.so.1: that is the name the executable asks for at run time.
			RuntimeDependencies.Add("$(TargetOutputDir)/libavatar_client.so.1", Path.Combine(PlatformDir, "libavatar_client.so"));
		}
		else if (Target.Platform == UnrealTargetPlatform.Mac)
		{
			string PlatformDir = Path.Combine(LibDir, "Mac");
			PublicDelayLoadDLLs.Add(Path.Combine(PlatformDir, "libavatar_client.dylib"));
			RuntimeDependencies.Add("$(PluginDir)/Binaries/ThirdParty/AvatarClient/Mac/libavatar_client.dylib",
				Path.Combine(PlatformDir, "libavatar_client.dylib"));
		}
		else if (Target.Platform == UnrealTargetPlatform.Android)
		{
			foreach (string Abi in new string[] { "arm64-v8a", "armeabi-v7a" })
			{
				string AbiLibrary = Path.Combine(LibDir, "Android", Abi, "libavatar_client.so");
				if (File.Exists(AbiLibrary))
				{
					PublicAdditionalLibraries.Add(AbiLibrary);
				}
			}
			// Copies the .so of each architecture into the APK.
			AdditionalPropertiesForReceipt.Add("AndroidPlugin", Path.Combine(ModuleDirectory, "AvatarBackend_APL.xml"));
		}
		else if (Target.Platform == UnrealTargetPlatform.IOS)
		{
			// Static: iOS apps link native code into the executable.
			PublicAdditionalLibraries.Add(Path.Combine(LibDir, "IOS", "libavatar_client.a"));
		}
	}
}
