"""GET /sessions on a SQLite store of N sessions (made directly in the
store; one in 100 is alice's), one build: p50/p99 of an admin's first page
and of alice's, 60 sequential requests each, then a read of one session
while 8 clients list for 5 s, over loopback (8 Python processes, or with
LISTERS=wrk wrk's 8 connections). Usage: python3 benches/list_sessions.py BENCH_BINARY N
(BENCH_BINARY: target/release/examples/loadtest, run as `__gateway`)."""
import base64, hashlib, hmac, http.client, json, os, shutil, socket, sqlite3, subprocess, sys, tempfile, time

bin_, n = sys.argv[1], int(sys.argv[2])
secret = "listbench-secret-0123456789-abcdefghijkl"
d = tempfile.mkdtemp()
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
env = {"PATH": os.environ["PATH"], "SECRET_KEY": secret,
       "CHATGATE_AUTH__MODE": "required", "CHATGATE_STORAGE__PATH": f"{d}/chat.db",
       "CHATGATE_LOG__FILE": f"{d}/app.log", "CHATGATE_LOG__STDERR": "off",
       "CHATGATE_OPENAI__BASE_URL": "http://127.0.0.1:9/v1",
       "CHATGATE_SERVER__BIND": f"127.0.0.1:{port}"}
out = subprocess.run([bin_, "__gateway", "keys", "create", "--name", "admin", "--admin"],
                     env=env, cwd=d, capture_output=True, text=True)
key = [w for w in out.stdout.split() if w.startswith("cgk_")][0]
db = sqlite3.connect(f"{d}/chat.db")
now = int(time.time() * 1000)
rows = []
for i in range(n):
    created = now - (n - i) * 15_000
    owner = "alice" if i % 100 == 0 else f"user{i % 5000}"
    rows.append((os.urandom(16), created, created // 3_600_000, owner))
db.executemany("INSERT INTO sessions (id, created_at, active_hour, owner) VALUES (?, ?, ?, ?)", rows)
db.commit(); db.close()

def jwt(sub):
    b = lambda x: base64.urlsafe_b64encode(x).rstrip(b"=")
    h = b(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    p = b(json.dumps({"sub": sub, "exp": int(time.time()) + 3600}).encode())
    sig = b(hmac.new(secret.encode(), h + b"." + p, hashlib.sha256).digest())
    return (h + b"." + p + b"." + sig).decode()

srv = subprocess.Popen([bin_, "__gateway", "serve"], env=env, cwd=d,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(200):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5); c.request("GET", "/healthz"); c.getresponse().read(); break
        except OSError:
            time.sleep(0.05)
    for who, token in [("admin", key), ("alice", jwt("alice"))]:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        times = []
        for i in range(60):
            t = time.perf_counter()
            c.request("GET", "/sessions?limit=20", headers={"Authorization": f"Bearer {token}"})
            r = c.getresponse(); body = r.read()
            times.append(time.perf_counter() - t)
            assert r.status == 200, (r.status, body[:200])
        times.sort()
        print(f"{who}: {len(json.loads(body)['sessions'])} listed; p50 {times[len(times)//2]*1000:.2f} ms, p99 {times[int(len(times)*0.99)]*1000:.2f} ms")
    # Another session's read while 8 clients list (admin pages) for 5 s.
    one = json.loads(body)["sessions"][0]["session_id"]
    stop = time.monotonic() + 5
    # Each lister is a process of its own: threads of this one would share
    # its interpreter lock with the reader below, whose every request would
    # then wait for a lister to let go of it (up to Python's 5 ms switch
    # interval), which is the client's delay, not the server's.
    import multiprocessing
    def lister(port, key, stop):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < stop:
            c.request("GET", "/sessions?limit=20", headers={"Authorization": f"Bearer {key}"})
            c.getresponse().read()
    ctx = multiprocessing.get_context("fork")
    if os.environ.get("LISTERS") == "wrk":
        # wrk's 8 connections (2 threads) as the 8 clients: far less CPU per
        # request than Python's, so less of the two cores is the clients'.
        wrk = subprocess.Popen(["wrk", "-t2", "-c8", "-d5s", "-H", f"Authorization: Bearer {key}",
                                f"http://127.0.0.1:{port}/sessions?limit=20"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threads = []
    else:
        wrk = None
        threads = [ctx.Process(target=lister, args=(port, key, stop)) for _ in range(8)]
    for t in threads:
        t.start()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    times = []
    while time.monotonic() < stop:
        t = time.perf_counter()
        c.request("GET", f"/session/{one}", headers={"Authorization": f"Bearer {key}"})
        r = c.getresponse(); r.read()
        times.append(time.perf_counter() - t)
        assert r.status == 200, r.status
    for t in threads:
        t.join()
    if wrk is not None:
        out = wrk.communicate(timeout=30)[0]
        rate = [l for l in out.splitlines() if "Requests/sec" in l]
        print(f"listers (wrk, 8 connections): {rate[0].split()[-1] if rate else out.strip()} listings/s")
    times.sort()
    print(f"a session's read while 8 clients list: {len(times)} reads; p50 {times[len(times)//2]*1000:.2f} ms, p99 {times[int(len(times)*0.99)]*1000:.2f} ms")
finally:
    srv.terminate(); srv.wait()
    shutil.rmtree(d, ignore_errors=True)
