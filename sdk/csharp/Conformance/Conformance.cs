// The C# SDK's conformance driver: the Client behind the line protocol of docs/CLIENTS.md
// ("Conformance"). Commands on stdin, events on stdout, one per line. Built and run by
// sdk/conformance/tests/conformance.rs:
//   mcs -langversion:7.3 -out:conformance.exe sdk/csharp/Runtime/*.cs sdk/csharp/Conformance/*.cs
//   mono conformance.exe

using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Text;
using System.Threading;
using Yorker;

static class Conformance
{
    static string Hex(byte[] b)
    {
        if (b == null || b.Length == 0) return "-";
        var s = new StringBuilder();
        foreach (var x in b) s.Append(x.ToString("x2"));
        return s.ToString();
    }

    static string ReasonText(YorkerEvent e)
    {
        switch (e.Reason)
        {
            case Reason.ConnectionLost: return "connection_lost";
            case Reason.GoAway: return "goaway " + e.Code + " " + e.AfterMs;
            case Reason.Error: return "error " + e.Code;
            case Reason.ServerSilent: return "server_silent";
            case Reason.HandshakeTimeout: return "handshake_timeout";
            case Reason.Protocol: return "protocol";
            case Reason.Requested: return "requested";
            case Reason.Closed: return "closed";
            default: return "other";
        }
    }

    static string Line(YorkerEvent e)
    {
        switch (e.Kind)
        {
            case EventKind.Connected: return "connected " + e.SessionId + " " + e.Epoch;
            case EventKind.Subscribed: return "subscribed " + e.Topic + " " + e.Result;
            case EventKind.Update: return "update " + e.Topic + " " + e.Seq + " " + (e.Snapshot ? 1 : 0) + " " + Hex(e.Payload);
            case EventKind.Reset: return "reset " + e.Topic + " " + e.Seq + " " + Hex(e.Payload);
            case EventKind.Disconnected:
                return "disconnected " + ReasonText(e) + " retry " + (e.RetryInMs < 0 ? "none" : e.RetryInMs.ToString());
            default: return "other";
        }
    }

    static void Main()
    {
        var commands = new BlockingCollection<string>();
        var reader = new Thread(() =>
        {
            string l;
            while ((l = Console.In.ReadLine()) != null) commands.Add(l);
            commands.CompleteAdding();
        });
        reader.IsBackground = true;
        reader.Start();
        var stdout = Console.Out;
        Client client = null;
        for (;;)
        {
            string cmd;
            if (commands.TryTake(out cmd))
            {
                string[] w = cmd.Split(new[] { ' ' }, StringSplitOptions.RemoveEmptyEntries);
                if (w.Length == 3 && w[0] == "connect")
                    client = new Client(w[1], w[2] == "-" ? "" : w[2], 200, 2000);
                else if (w.Length == 2 && w[0] == "subscribe" && client != null)
                    client.Subscribe(w[1]);
                else if (w.Length == 1 && w[0] == "reconnect" && client != null)
                    client.ReconnectNow();
                else if (w.Length == 1 && w[0] == "close")
                {
                    if (client != null)
                    {
                        client.Close();
                        YorkerEvent e;
                        while ((e = client.Poll(0)) != null) stdout.WriteLine(Line(e));
                    }
                    client = null;
                    stdout.WriteLine("closed");
                }
                else if (w.Length == 3 && w[0] == "swarm")
                {
                    int n = int.Parse(w[1]);
                    var delays = new List<string>();
                    for (int i = 0; i < n; i++)
                    {
                        var c = new Client(w[2], "");
                        for (;;)
                        {
                            var e = c.Poll(50);
                            if (e != null && e.Kind == EventKind.Disconnected) { delays.Add(e.RetryInMs.ToString()); break; }
                        }
                        c.Close();
                    }
                    stdout.WriteLine("delays " + string.Join(" ", delays));
                }
                else if (w.Length == 1 && w[0] == "exit") return;
                else stdout.WriteLine("unknown " + cmd);
                stdout.Flush();
            }
            else if (commands.IsCompleted) return;
            if (client != null)
            {
                var e = client.Poll(5);
                if (e != null) { stdout.WriteLine(Line(e)); stdout.Flush(); }
            }
            else Thread.Sleep(5);
        }
    }
}
