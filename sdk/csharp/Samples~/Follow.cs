// Follow one topic with the C# SDK (a Unity MonoBehaviour would call Poll(0) from Update()).
// The conformance suite compiles this file, so it cannot rot.
using System;
using Yorker;

static class Follow
{
    static void Main(string[] args)
    {
        var client = new Client(args.Length > 0 ? args[0] : "127.0.0.1:7000", "");
        client.Subscribe(args.Length > 1 ? args[1] : "match/42");
        for (;;)
        {
            YorkerEvent e = client.Poll(1000);
            if (e == null) continue;
            if (e.Kind == EventKind.Update || e.Kind == EventKind.Reset)
                Console.WriteLine(e.Topic + " seq " + e.Seq + ": " + e.Payload.Length + " bytes");
            if (e.Kind == EventKind.Disconnected)
            {
                if (e.RetryInMs < 0) return; // refused (a bad token): give up
                Console.WriteLine("disconnected (" + e.Reason + "), retrying in " + e.RetryInMs + " ms");
            }
        }
    }
}
