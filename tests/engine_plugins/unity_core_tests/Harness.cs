// A minimal test runner for the Unity package's engine-independent assembly under mono (no NUnit is
// packaged for Debian's mono). `mono CoreTests.exe SUITE` runs every public static method of the class SUITE
// and prints "PASS Suite.Method" or "FAIL Suite.Method: why"; the exit status is 1 when any failed.
// `mono CoreTests.exe abi` prints the package's view of the C ABI (see AbiDump); `mono CoreTests.exe session
// ...` talks to a real server through the real native core (see NativeSessionRun).
using System;
using System.Collections.Generic;
using System.Reflection;

namespace AvatarBackend.Client.Tests
{
    public sealed class CheckFailed : Exception
    {
        public CheckFailed(string message) : base(message) { }
    }

    public static class Check
    {
        public static void True(bool condition, string what)
        {
            if (!condition)
                throw new CheckFailed(what);
        }

        public static void Equal<T>(T expected, T actual, string what)
        {
            if (!EqualityComparer<T>.Default.Equals(expected, actual))
                throw new CheckFailed(string.Format("{0}: expected {1}, got {2}", what, expected, actual));
        }

        public static void Near(double expected, double actual, double tolerance, string what)
        {
            if (Math.Abs(expected - actual) > tolerance)
                throw new CheckFailed(string.Format("{0}: expected {1} +- {2}, got {3}", what, expected, tolerance,
                                                    actual));
        }

        public static void Throws<TException>(Action action, string what) where TException : Exception
        {
            try
            {
                action();
            }
            catch (TException)
            {
                return;
            }
            throw new CheckFailed(what + ": expected " + typeof(TException).Name);
        }

        /// <summary>Runs <paramref name="action"/> (after one warm-up run, which may allocate caches) and
        /// fails if it allocated managed memory.</summary>
        public static void AllocatesNothing(Action action, string what)
        {
            action();
            long before = GC.GetAllocatedBytesForCurrentThread();
            action();
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            if (allocated != 0)
                throw new CheckFailed(string.Format("{0}: allocated {1} bytes", what, allocated));
        }
    }

    public static class Program
    {
        public static int Main(string[] args)
        {
            if (args.Length == 0)
            {
                Console.Error.WriteLine("usage: CoreTests.exe SUITE | abi | session ADDRESS NPC CHARACTER PCM_FILE");
                return 2;
            }
            if (args[0] == "abi")
                return AbiDump.Run();
            if (args[0] == "session")
                return NativeSessionRun.Run(args);
            Type suite = typeof(Program).Assembly.GetType("AvatarBackend.Client.Tests." + args[0]);
            if (suite == null)
            {
                Console.Error.WriteLine("no suite " + args[0]);
                return 2;
            }
            int failed = 0, passed = 0;
            foreach (MethodInfo test in suite.GetMethods(BindingFlags.Public | BindingFlags.Static))
            {
                try
                {
                    test.Invoke(null, null);
                    passed++;
                    Console.WriteLine("PASS " + suite.Name + "." + test.Name);
                }
                catch (TargetInvocationException error)
                {
                    failed++;
                    Exception cause = error.InnerException;
                    Console.WriteLine("FAIL " + suite.Name + "." + test.Name + ": " +
                                      (cause is CheckFailed ? cause.Message : cause.ToString()));
                }
            }
            Console.WriteLine(string.Format("{0} passed, {1} failed", passed, failed));
            return failed == 0 && passed > 0 ? 0 : 1;
        }
    }
}
