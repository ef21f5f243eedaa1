"""An SMTP sink for the alerting tests: `tls` mode speaks TLS from the first byte (port 465
style), `starttls` mode offers STARTTLS and refuses MAIL before it. Writes its port to
PORT_FILE and every message, prefixed with the TLS version used, to OUT_FILE."""
import socket
import ssl
import sys
import threading

mode, port_file, cert, key, out_file = sys.argv[1:6]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen()
with open(port_file + ".tmp", "w") as f:
    f.write(str(srv.getsockname()[1]))
import os
os.rename(port_file + ".tmp", port_file)


def session(conn):
    try:
        if mode == "tls":
            conn = ctx.wrap_socket(conn, server_side=True)
        f = conn.makefile("rwb")

        def send(s):
            f.write(s.encode())
            f.flush()

        send("220 sink ESMTP\r\n")
        data = None
        while True:
            line = f.readline()
            if not line:
                return
            if data is not None:
                if line == b".\r\n":
                    version = conn.version() if isinstance(conn, ssl.SSLSocket) else "plain"
                    with open(out_file, "ab") as o:
                        o.write(b"TLS: " + version.encode() + b"\n" + data + b"\n=====\n")
                    data = None
                    send("250 queued\r\n")
                else:
                    data += line
                continue
            cmd = line.decode(errors="replace").strip().upper()
            secure = isinstance(conn, ssl.SSLSocket)
            if cmd.startswith("EHLO"):
                send("250-sink\r\n" + ("" if secure else "250-STARTTLS\r\n") + "250 8BITMIME\r\n")
            elif cmd.startswith("STARTTLS") and not secure:
                send("220 go ahead\r\n")
                conn = ctx.wrap_socket(conn, server_side=True)
                f = conn.makefile("rwb")
            elif cmd.startswith("MAIL") and not secure:
                send("530 5.7.0 must issue STARTTLS first\r\n")
            elif cmd.startswith("DATA"):
                data = b""
                send("354 go ahead\r\n")
            elif cmd.startswith("QUIT"):
                send("221 bye\r\n")
                return
            else:
                send("250 ok\r\n")
    except Exception as e:  # a failed handshake ends the session, the sink keeps serving
        print("session error:", e, file=sys.stderr)
    finally:
        try:
            conn.close()
        except Exception:
            pass


while True:
    c, _ = srv.accept()
    threading.Thread(target=session, args=(c,), daemon=True).start()
