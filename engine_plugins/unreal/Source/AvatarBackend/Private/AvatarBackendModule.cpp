#include "AvatarBackendModule.h"

#include "HAL/PlatformProcess.h"
#include "Interfaces/IPluginManager.h"
#include "Misc/Paths.h"
#include "avatar_backend/avatar_client.h"

DEFINE_LOG_CATEGORY(LogAvatarBackend);

bool FAvatarBackendModule::bNativeCoreAvailable = false;

void FAvatarBackendModule::StartupModule()
{
#if PLATFORM_WINDOWS || PLATFORM_MAC
	// Delay-loaded: load it from the plugin's binaries before the first avb_* call resolves it.
#if PLATFORM_WINDOWS
	const TCHAR* Relative = TEXT("Binaries/ThirdParty/AvatarClient/Win64/avatar_client.dll");
#else
	const TCHAR* Relative = TEXT("Binaries/ThirdParty/AvatarClient/Mac/libavatar_client.dylib");
#endif
	const TSharedPtr<IPlugin> Plugin = IPluginManager::Get().FindPlugin(TEXT("AvatarBackend"));
	const FString LibraryPath = Plugin.IsValid() ? FPaths::Combine(Plugin->GetBaseDir(), Relative) : FString(Relative);
	NativeCoreHandle = FPlatformProcess::GetDllHandle(*LibraryPath);
	if (NativeCoreHandle == nullptr)
	{
		UE_LOG(LogAvatarBackend, Error, TEXT("Could not load %s: see ThirdParty/AvatarClient/README.md"), *LibraryPath);
		return;
	}
#endif
	const uint32 Version = avb_abi_version();
	bNativeCoreAvailable = Version == AVB_ABI_VERSION;
	if (!bNativeCoreAvailable)
	{
		UE_LOG(LogAvatarBackend, Error, TEXT("libavatar_client has ABI version %u, this plugin expects %u: install the "
			"library from the same release"), Version, (uint32)AVB_ABI_VERSION);
	}
}

void FAvatarBackendModule::ShutdownModule()
{
	bNativeCoreAvailable = false;
	if (NativeCoreHandle != nullptr)
	{
		FPlatformProcess::FreeDllHandle(NativeCoreHandle);
		NativeCoreHandle = nullptr;
	}
}

bool FAvatarBackendModule::IsNativeCoreAvailable()
{
	return bNativeCoreAvailable;
}

IMPLEMENT_MODULE(FAvatarBackendModule, AvatarBackend)
