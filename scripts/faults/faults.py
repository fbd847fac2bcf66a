#!/usr/bin/env python3
"""Fault-injection suite with a history checker for aip's cluster mode.

Each scenario starts, in a fresh temporary directory and on free loopback ports:

* a real ``redis-server`` (``appendonly yes``, ``appendfsync always``), or for the
  failover scenario a Redis Cluster of 3 masters + 3 replicas;
* three real ``aip serve --cluster`` nodes (``n1``, ``n2``, ``n3``; ``AIP_BIN``);
* N real ``aip device`` processes, each told all three nodes (its first one rotating), each
  command it runs appending its token to a per-device file (``$FAULT_DEVICE_LOG``), so a
  command that ran twice leaves its token twice;
* one constellation WebSocket client per node sending ``task`` frames with an explicit
  ``execute_command`` plan;
* a load generator: ~20 ``POST /api/dispatch``/s through random nodes to random devices,
  each echoing a unique token.

It records a history (dispatch answers, session reads from the nodes during the run and
from every node after it, constellation acks / errors / task_ends and connection lifetimes,
``GET /api/clients`` snapshots of every node once a second, the devices' own connection
logs and the tokens they executed), injects the scenario's fault, heals it, lets the
cluster settle, and checks the history (see ``check``). Exit status 1 when any anomaly is
found, 2 on a harness error (a cluster that would not start, a scenario over its time).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import collections
import ctypes
import datetime as dt
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

import websockets

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TERMINAL = ("completed", "failed", "cancelled")
NODE_TTL = 5.0  # the cluster's node heartbeat TTL (docs/src/cluster.md)
ACCEPT_TIMEOUT = 5  # aip serve --accept-timeout used here
COMMAND_TIMEOUT = 10  # aip serve --command-timeout used here
PRESENCE_BOUND = 5.0  # a connected device must be listed everywhere this long after heal
STUCK_BOUND = 25.0  # every session must be terminal this long after heal / its dispatch

# --------------------------------------------------------------------------------------
# Processes: each in its own process group, killed with the harness (PR_SET_PDEATHSIG) and
# at exit (atexit and SIGTERM/SIGINT/SIGHUP handlers).

_LIBC = ctypes.CDLL(None, use_errno=True)
_PROCS: list["Proc"] = []
_TMPDIRS: list[str] = []
KEEP = False


def _child_setup():
    os.setpgrp()
    _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Proc:
    def __init__(self, name, argv, log, env=None):
        self.name = name
        self.argv = argv
        self.log = log
        self.env = env
        self.p = None
        self.start()

    def start(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIP_") and k != "RUST_LOG"}
        if self.env:
            env.update(self.env)
        if self.p is not None:
            try:
                self.p.wait(timeout=5)  # reap a killed predecessor
            except Exception:
                pass
        out = open(self.log, "ab")
        self.p = subprocess.Popen(
            self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, preexec_fn=_child_setup, close_fds=True)
        out.close()
        if self not in _PROCS:
            _PROCS.append(self)

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p is not None and self.p.poll() is None

    def signal(self, sig):
        if self.alive():
            try:
                os.kill(self.p.pid, sig)
            except ProcessLookupError:
                pass

    def kill_group(self):
        if self.p is None:
            return
        for sig in (signal.SIGKILL, signal.SIGCONT):
            try:
                os.killpg(self.p.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.p.wait(timeout=5)
        except Exception:
            pass

    async def wait_exit(self, timeout):
        deadline = time.time() + timeout
        while self.alive() and time.time() < deadline:
            await asyncio.sleep(0.05)
        return not self.alive()


def cleanup_all():
    for p in list(_PROCS):
        p.kill_group()
    _PROCS.clear()
    if not KEEP:
        for d in _TMPDIRS:
            shutil.rmtree(d, ignore_errors=True)
    _TMPDIRS.clear()


atexit.register(cleanup_all)


def _on_signal(sig, _frame):
    print(f"\nfaults: signal {sig}: stopping", file=sys.stderr, flush=True)
    cleanup_all()
    os._exit(130)


for _s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(_s, _on_signal)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n):
    # Bound together so they differ; redis cluster also uses port+10000 (bus): avoid > 55535.
    out = set()
    while len(out) < n:
        p = free_port()
        if p < 55000:
            out.add(p)
    return sorted(out)


# --------------------------------------------------------------------------------------
# A tiny HTTP/1.1 client on asyncio streams (Connection: close).

class NoAnswer(Exception):
    def __init__(self, kind, detail):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind  # "refused" (never reached the node), "timeout", "reset"


async def http(method, port, path, body=None, timeout=10.0):
    async def go():
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError as e:
            raise NoAnswer("refused", str(e))
        try:
            data = json.dumps(body).encode() if body is not None else b""
            head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    "Connection: close\r\nAccept: application/json\r\n")
            if body is not None:
                head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            w.write(head.encode() + b"\r\n" + data)
            await w.drain()
            raw = await r.read()
        except OSError as e:
            raise NoAnswer("reset", str(e))
        finally:
            w.close()
        if not raw:
            raise NoAnswer("reset", "empty answer")
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split()[1])
        except Exception:
            raise NoAnswer("reset", f"bad status line {lines[0]!r}")
        headers = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            out = b""
            while rest:
                size_s, _, rest = rest.partition(b"\r\n")
                size = int(size_s.split(b";")[0] or b"0", 16)
                if size == 0:
                    break
                out += rest[:size]
                rest = rest[size + 2:]
            rest = out
        try:
            parsed = json.loads(rest) if rest else None
        except ValueError:
            parsed = rest.decode("utf-8", "replace")
        return status, parsed

    try:
        return await asyncio.wait_for(go(), timeout)
    except asyncio.TimeoutError:
        raise NoAnswer("timeout", f"no answer within {timeout}s")


# --------------------------------------------------------------------------------------
# History: plain lists of dicts, all times wall-clock seconds (time.time()).

def new_history(name):
    return {
        "scenario": name,
        "events": [],         # fault injections/heals: {t, what}
        "dispatches": [],     # {token, target, node, t_sent, t_answer, status, body, no_answer}
        "ctasks": [],         # constellation tasks: {token, kid, conn, node, target, t_sent}
        "cframes": [],        # frames received by constellations: {conn, t, frame}
        "conns": [],          # constellation connections: {conn, kid, node, t_open, t_close}
        "reads": [],          # {sid, node, t_sent, t_answer, status, state, reason, error, digest, final}
        "presence": [],       # {node, t_sent, t_answer, status, devices: {id: node}}
        "devices": [],        # incarnations: {client_id, inc, t_start, t_killed, servers, log}
        "device_log": [],     # parsed device connection log: {client_id, inc, t, msg, server}
        "executions": [],     # {token, client_id, inc, t}
        "node_events": [],    # {node, t, what}
    }


def now():
    return time.time()


def parse_ts(s):
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z?$", s or "")
    if not m:
        return None
    frac = (m.group(2) or ".0")[:7]
    return dt.datetime.fromisoformat(m.group(1) + frac + "+00:00").timestamp()


def result_digest(v):
    """What must not change once a session is terminal: state, reason, error, result,
    finished_at (to the millisecond)."""
    fin = v.get("finished_at")
    fin_ms = None
    if fin:
        t = parse_ts(fin)
        fin_ms = round(t * 1000) if t else fin
    key = json.dumps([v.get("state"), v.get("reason"), v.get("error"), v.get("result"), fin_ms],
                     sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def stdout_of(v):
    try:
        return v["result"]["rounds"][0]["action_results"][0]["result"]["stdout"]
    except Exception:
        return None


# --------------------------------------------------------------------------------------
# The cluster under test.

NODES = ("n1", "n2", "n3")


class Cluster:
    def __init__(self, bin_path, n_devices, redis_mode, hist, base):
        self.bin = bin_path
        self.n_devices = n_devices
        self.redis_mode = redis_mode
        self.h = hist
        self.base = base
        self.node_port = {}
        self.node_proc = {}
        self.node_state = {}  # up | killed | stopped | stopping
        self.redis = []       # [(port, Proc, dir)]
        self.redis_url = None
        self.devices = {}     # client_id -> {"proc", "inc", "servers"}
        self.dev_ids = [f"dev-{i:02d}" for i in range(n_devices)]
        os.makedirs(os.path.join(base, "devlogs"), exist_ok=True)

    # ---- redis
    def _redis_argv(self, port, d, extra=()):
        return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes", "--appendfsync", "always", "--dir", d,
                "--protected-mode", "no", "--logfile", os.path.join(d, "redis.log"), *extra]

    async def start_redis(self):
        if self.redis_mode == "single":
            port = free_ports(1)[0]
            d = os.path.join(self.base, "redis")
            os.makedirs(d)
            p = Proc("redis", self._redis_argv(port, d), os.path.join(d, "stdout.log"))
            self.redis.append([port, p, d])
            await self.wait_redis(port)
            self.redis_url = f"redis://127.0.0.1:{port}"
            return
        ports = free_ports(6)
        extra = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", "2000")
        for i, port in enumerate(ports):
            d = os.path.join(self.base, f"redis{i}")
            os.makedirs(d)
            p = Proc(f"redis{i}", self._redis_argv(port, d, extra), os.path.join(d, "stdout.log"))
            self.redis.append([port, p, d])
        for port in ports:
            await self.wait_redis(port)
        out = await asyncio.to_thread(
            subprocess.run,
            ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
             "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout}{out.stderr}")
        deadline = now() + 30
        while True:
            infos = [self.rcli(p, "CLUSTER", "INFO") for p in ports]
            if all("cluster_state:ok" in i for i in infos) and self.replicas_in_sync():
                break
            if now() > deadline:
                raise RuntimeError("the Redis Cluster did not become ok")
            await asyncio.sleep(0.2)
        self.redis_url = ",".join(f"redis://127.0.0.1:{p}" for p in ports)

    def rcli(self, port, *args, timeout=3):
        try:
            return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                                  text=True, timeout=timeout).stdout
        except Exception as e:
            return f"ERR {e}"

    def replicas_in_sync(self):
        n = 0
        for port, _, _ in self.redis:
            info = self.rcli(port, "INFO", "replication")
            if "role:slave" in info and "master_link_status:up" in info:
                n += 1
        return n == 3

    async def wait_redis(self, port, timeout=20):
        deadline = now() + timeout
        while now() < deadline:
            if "PONG" in self.rcli(port, "PING", timeout=1):
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"redis on {port} did not answer PING")

    def aip_master(self):
        """(index in self.redis, port) of the master holding the slot of {aip}."""
        port0 = next(p for p, pr, _ in self.redis if pr.alive())
        slot = int(self.rcli(port0, "CLUSTER", "KEYSLOT", "{aip}").strip())
        for line in self.rcli(port0, "CLUSTER", "NODES").splitlines():
            parts = line.split()
            if len(parts) < 9 or "master" not in parts[2] or "fail" in parts[2]:
                continue
            for rng in parts[8:]:
                if rng.startswith("["):
                    continue
                lo, _, hi = rng.partition("-")
                if int(lo) <= slot <= int(hi or lo):
                    port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
                    idx = next(i for i, r in enumerate(self.redis) if r[0] == port)
                    return idx, port, slot
        raise RuntimeError("no master holds the slot of {aip}")

    # ---- nodes
    def node_url(self, n):
        return f"http://127.0.0.1:{self.node_port[n]}"

    def node_ws(self, n):
        return f"ws://127.0.0.1:{self.node_port[n]}/ws"

    async def start_node(self, n, wait=True):
        if n not in self.node_port:
            self.node_port[n] = free_ports(1)[0]
        d = os.path.join(self.base, n)
        os.makedirs(d, exist_ok=True)
        argv = [self.bin, "serve", "--host", "127.0.0.1", "--port", str(self.node_port[n]),
                "--cluster", self.redis_url, "--node-id", n, "--data-dir", os.path.join(d, "data"),
                "--accept-timeout", str(ACCEPT_TIMEOUT), "--command-timeout", str(COMMAND_TIMEOUT),
                "--log-format", "json", "--log-level", "INFO"]
        if n in self.node_proc:
            self.node_proc[n].start()
        else:
            self.node_proc[n] = Proc(n, argv, os.path.join(d, "node.log"))
        self.h["node_events"].append({"node": n, "t": now(), "what": "start"})
        if wait:
            await self.wait_ready(n)
        self.node_state[n] = "up"

    async def wait_ready(self, n, timeout=30):
        deadline = now() + timeout
        while now() < deadline:
            if not self.node_proc[n].alive():
                raise RuntimeError(f"node {n} exited; see {self.node_proc[n].log}")
            try:
                st, _ = await http("GET", self.node_port[n], "/api/ready", timeout=2)
                if st == 200:
                    return
            except NoAnswer:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"node {n} not ready within {timeout}s")

    def signal_node(self, n, sig):
        self.node_proc[n].signal(sig)
        what = {signal.SIGKILL: "kill -9", signal.SIGSTOP: "SIGSTOP", signal.SIGCONT: "SIGCONT",
                signal.SIGTERM: "SIGTERM"}[sig]
        self.h["node_events"].append({"node": n, "t": now(), "what": what})
        self.node_state[n] = {signal.SIGKILL: "killed", signal.SIGSTOP: "stopped",
                              signal.SIGCONT: "up", signal.SIGTERM: "stopping"}[sig]

    def up_nodes(self):
        return [n for n in NODES if self.node_state.get(n) == "up"]

    # ---- devices
    def start_device(self, cid, servers):
        st = self.devices.get(cid)
        inc = (st["inc"] + 1) if st else 0
        log = os.path.join(self.base, "devlogs", f"{cid}.{inc}.log")
        argv = [self.bin, "device", "--server", ",".join(servers), "--client-id", cid,
                "--log-format", "json", "--log-level", "INFO"]
        env = {"FAULT_DEVICE_LOG": os.path.join(self.base, "devlogs", f"{cid}.tokens"),
               "FAULT_DEVICE_INC": str(inc)}
        p = Proc(cid, argv, log, env)
        self.devices[cid] = {"proc": p, "inc": inc, "servers": servers}
        self.h["devices"].append({"client_id": cid, "inc": inc, "t_start": now(),
                                  "t_killed": None, "servers": servers, "log": log})

    def kill_device(self, cid):
        st = self.devices[cid]
        st["proc"].kill_group()
        for rec in self.h["devices"]:
            if rec["client_id"] == cid and rec["inc"] == st["inc"]:
                rec["t_killed"] = now()

    def default_servers(self, i):
        order = [NODES[(i + k) % 3] for k in range(3)]
        return [self.node_ws(n) for n in order]

    async def start(self):
        await self.start_redis()
        await asyncio.gather(*(self.start_node(n) for n in NODES))
        for i, cid in enumerate(self.dev_ids):
            self.start_device(cid, self.default_servers(i))
        # Every device listed by every node.
        deadline = now() + 40
        while True:
            ok = True
            for n in NODES:
                try:
                    st, v = await http("GET", self.node_port[n], "/api/clients", timeout=3)
                except NoAnswer:
                    ok = False
                    continue
                listed = {c["client_id"] for c in (v or {}).get("clients", [])}
                if not set(self.dev_ids) <= listed:
                    ok = False
            if ok:
                return
            if now() > deadline:
                raise RuntimeError("the devices did not all register within 40 s")
            await asyncio.sleep(0.2)

    def collect(self):
        """Device connection logs and executed tokens into the history."""
        for rec in self.h["devices"]:
            try:
                with open(rec["log"], encoding="utf-8", errors="replace") as f:
                    for ln in f:
                        try:
                            o = json.loads(ln)
                        except ValueError:
                            continue
                        msg = o.get("msg")
                        if msg in ("connecting", "registered", "disconnected; reconnecting", "stopped"):
                            self.h["device_log"].append({
                                "client_id": rec["client_id"], "inc": rec["inc"],
                                "t": parse_ts(o.get("ts")), "msg": msg,
                                "server": o.get("server") if msg == "connecting" else None,
                                "reason": o.get("reason")})
            except FileNotFoundError:
                pass
        for cid in self.dev_ids:
            path = os.path.join(self.base, "devlogs", f"{cid}.tokens")
            if not os.path.exists(path):
                continue
            with open(path, encoding="utf-8", errors="replace") as f:
                for ln in f:
                    parts = ln.split()
                    if not parts:
                        continue
                    self.h["executions"].append({
                        "token": parts[0], "client_id": cid,
                        "inc": int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None,
                        "t": float(parts[2]) if len(parts) > 2 else None})

    def stop(self):
        for st in self.devices.values():
            st["proc"].kill_group()
        for p in self.node_proc.values():
            p.kill_group()
        for _, p, _ in self.redis:
            p.kill_group()


# --------------------------------------------------------------------------------------
# Load: HTTP dispatches, constellations, session reads, presence snapshots.

LONG_FRACTION = 0.3  # share of commands that sleep 0.5-4 s after recording their token


def command_for(token):
    """Appends `token inc time` to the device's token file (so a command that ran twice
    leaves its token twice), sometimes sleeps (so sessions span the faults), prints the
    token."""
    nap = f"sleep {random.uniform(0.5, 4):.1f}; " if random.random() < LONG_FRACTION else ""
    return (f'echo "{token} $FAULT_DEVICE_INC $(date +%s.%N)" >> "$FAULT_DEVICE_LOG"; '
            f"{nap}echo {token}")


class Load:
    def __init__(self, cl: Cluster, h, rate=20.0, ctask_rate=1.0):
        self.cl = cl
        self.h = h
        self.rate = rate
        self.ctask_rate = ctask_rate
        self.running = True
        self.sessions = {}     # sid -> {"t": created, "origin", "token", "reads": n, "next": t}
        self.seq = 0
        self.tasks = []
        self.inflight = 0
        self.conn_seq = 0
        self.salt = os.urandom(3).hex()

    def token(self, prefix):
        self.seq += 1
        return f"{prefix}{self.seq:05d}x{self.salt}"

    def remember(self, sid, origin, token):
        if sid and sid not in self.sessions:
            self.sessions[sid] = {"t": now(), "origin": origin, "token": token, "reads": 0,
                                  "next": now() + 1.5}

    async def one_dispatch(self):
        node = random.choice(NODES)
        target = random.choice(self.cl.dev_ids)
        token = self.token("T")
        rec = {"token": token, "target": target, "node": node, "t_sent": now(),
               "t_answer": None, "status": None, "body": None, "no_answer": None}
        self.h["dispatches"].append(rec)
        body = {"target_id": target, "task_name": token, "request": f"fault load {token}",
                "commands": [{"tool_name": "execute_command", "tool_type": "action",
                              "parameters": {"command": command_for(token)}}]}
        self.inflight += 1
        try:
            st, v = await http("POST", self.cl.node_port[node], "/api/dispatch", body, timeout=20)
            rec["status"], rec["body"] = st, v
            if st == 200 and isinstance(v, dict):
                self.remember(v.get("session_id"), "http", token)
        except NoAnswer as e:
            rec["no_answer"] = e.kind
        finally:
            rec["t_answer"] = now()
            self.inflight -= 1

    async def dispatcher(self):
        period = 1.0 / self.rate
        nxt = now()
        while self.running:
            if self.inflight < 300:
                self.tasks.append(asyncio.create_task(self.one_dispatch()))
            nxt += period
            await asyncio.sleep(max(0.0, nxt - now()))

    async def constellation(self, node):
        """One constellation on `node`, reconnecting (with a new client id) when its
        connection ends; tasks at ctask_rate/s while connected."""
        while self.running:
            self.conn_seq += 1
            conn = f"k{node}c{self.conn_seq}"
            kid = f"galaxy-{conn}"
            crec = {"conn": conn, "kid": kid, "node": node, "t_open": None, "t_close": None,
                    "refused": None}
            try:
                ws = await asyncio.wait_for(websockets.connect(
                    self.cl.node_ws(node), ping_interval=None, close_timeout=1,
                    open_timeout=3, max_size=None), 4)
            except Exception:
                await asyncio.sleep(1)
                continue
            try:
                await ws.send(json.dumps({"type": "register", "status": "ok",
                                          "client_type": "constellation", "client_id": kid}))
                ok = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if ok.get("status") != "ok":
                    crec["refused"] = ok
                    self.h["conns"].append(crec)
                    await ws.close()
                    await asyncio.sleep(1)
                    continue
                crec["t_open"] = now()
                self.h["conns"].append(crec)

                async def reader():
                    try:
                        async for msg in ws:
                            try:
                                fr = json.loads(msg)
                            except ValueError:
                                continue
                            self.h["cframes"].append({"conn": conn, "t": now(), "frame": fr})
                            if fr.get("type") == "heartbeat" and fr.get("session_id"):
                                self.remember(fr["session_id"], "constellation", fr["session_id"])
                    finally:
                        if crec["t_close"] is None:
                            crec["t_close"] = now()

                rtask = asyncio.create_task(reader())
                while self.running and not rtask.done():
                    token = self.token("K")
                    target = random.choice(self.cl.dev_ids)
                    self.h["ctasks"].append({"token": token, "kid": kid, "conn": conn,
                                             "node": node, "target": target, "t_sent": now()})
                    frame = {"type": "task", "status": "continue", "client_type": "constellation",
                             "session_id": token, "task_name": token, "client_id": kid,
                             "target_id": target, "request": f"fault load {token}",
                             "metadata": {"commands": [{"tool_name": "execute_command",
                                                        "tool_type": "action",
                                                        "parameters": {"command": command_for(token)}}]}}
                    try:
                        await asyncio.wait_for(ws.send(json.dumps(frame)), 5)
                    except Exception:
                        break
                    await asyncio.sleep(random.expovariate(self.ctask_rate))
                if not self.running and not rtask.done():
                    # Keep the connection open while sessions settle (task_end may come).
                    closing = asyncio.create_task(self.closing.wait())
                    await asyncio.wait([rtask, closing], return_when=asyncio.FIRST_COMPLETED)
                    closing.cancel()
                if crec["t_close"] is None:
                    crec["t_close"] = now()
                rtask.cancel()
            except Exception:
                pass
            finally:
                if crec["t_close"] is None and crec["t_open"] is not None:
                    crec["t_close"] = now()
                try:
                    await ws.close()
                except Exception:
                    pass
            if self.running:
                await asyncio.sleep(1)

    async def reader(self):
        """Reads each known session from a random up node ~1.5 s after its start, then
        every ~6 s (at most ~25 reads/s)."""
        while self.running or self.reading_tail:
            due = [sid for sid, s in self.sessions.items() if s["next"] <= now()]
            random.shuffle(due)
            batch = due[:12]
            await asyncio.gather(*(self.read_session(sid, random.choice(NODES), False)
                                   for sid in batch))
            for sid in batch:
                s = self.sessions[sid]
                s["reads"] += 1
                s["next"] = now() + (4.0 if s["reads"] < 2 else 8.0)
            await asyncio.sleep(0.5)

    async def read_session(self, sid, node, final):
        if self.cl.node_state.get(node) != "up":
            return None
        rec = {"sid": sid, "node": node, "t_sent": now(), "t_answer": None, "status": None,
               "state": None, "reason": None, "error": None, "digest": None, "final": final,
               "stdout": None, "finished_at": None}
        try:
            st, v = await http("GET", self.cl.node_port[node], f"/api/sessions/{sid}", timeout=6)
            rec["status"] = st
            if st == 200 and isinstance(v, dict):
                rec.update(state=v.get("state"), reason=v.get("reason"), error=v.get("error"),
                           digest=result_digest(v), stdout=stdout_of(v),
                           finished_at=parse_ts(v.get("finished_at") or ""))
        except NoAnswer as e:
            rec["status"] = None
            rec["error"] = e.kind
        rec["t_answer"] = now()
        self.h["reads"].append(rec)
        return rec

    async def presence(self):
        rnd = 0
        while self.running or self.reading_tail:
            t0 = now()
            rnd += 1
            await asyncio.gather(*(self.snapshot(n, rnd) for n in NODES))
            await asyncio.sleep(max(0.0, 1.0 - (now() - t0)))

    async def snapshot(self, n, rnd):
        if self.cl.node_state.get(n) != "up":
            return
        rec = {"node": n, "round": rnd, "t_sent": now(), "t_answer": None, "status": None, "devices": None}
        try:
            st, v = await http("GET", self.cl.node_port[n], "/api/clients", timeout=3)
            rec["status"] = st
            if st == 200 and isinstance(v, dict):
                rec["devices"] = {c["client_id"]: c.get("node") for c in v.get("clients", [])
                                  if c.get("type") == "device"}
        except NoAnswer as e:
            rec["status"] = None
        rec["t_answer"] = now()
        self.h["presence"].append(rec)

    def start(self):
        self.closing = asyncio.Event()
        self.reading_tail = True
        self.bg = [asyncio.create_task(self.dispatcher()),
                   asyncio.create_task(self.reader()),
                   asyncio.create_task(self.presence())]
        self.cons = [asyncio.create_task(self.constellation(n)) for n in NODES]

    async def stop_load(self):
        self.running = False
        await asyncio.gather(self.bg[0], return_exceptions=True)

    async def settle(self, deadline):
        """Waits (reads continuing) until every known session reads terminal, or deadline."""
        while now() < deadline:
            pending = [sid for sid in self.sessions if not self.last_terminal(sid)]
            if not pending:
                break
            await asyncio.gather(*(self.read_session(sid, random.choice(self.cl.up_nodes() or list(NODES)), False)
                                   for sid in pending[:40]))
            await asyncio.sleep(1)

    def last_terminal(self, sid):
        for r in reversed(self.h["reads"]):
            if r["sid"] == sid and r["status"] == 200:
                return r["state"] in TERMINAL
        return False

    async def final_reads(self, tag):
        sem = asyncio.Semaphore(24)

        async def one(sid, n):
            async with sem:
                await self.read_session(sid, n, tag)

        await asyncio.gather(*(one(sid, n) for sid in list(self.sessions) for n in NODES))

    async def finish(self):
        self.reading_tail = False
        self.closing.set()
        await asyncio.gather(*self.bg, return_exceptions=True)
        for t in self.cons:
            t.cancel()
        await asyncio.gather(*self.cons, return_exceptions=True)
        for t in self.tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for c in self.h["conns"]:
            if c["t_open"] is not None and c["t_close"] is None:
                c["t_close"] = now()


# --------------------------------------------------------------------------------------
# Faults. Each takes the cluster and returns the heal time (after the injection is over).

def ev(h, what):
    h["events"].append({"t": now(), "what": what})
    print(f"    {time.strftime('%H:%M:%S')} {what}", flush=True)


async def restart_node(cl, n):
    await cl.start_node(n)
    ev(cl.h, f"{n} restarted and ready")


async def f_node_kill(cl, h, down):
    ev(h, f"kill -9 n2 (restart after {down:g} s)")
    cl.signal_node("n2", signal.SIGKILL)
    await asyncio.sleep(down)
    await restart_node(cl, "n2")
    return now()


async def f_node_kill_twice(cl, h):
    ev(h, "kill -9 n2 (1st), restart after 2 s")
    cl.signal_node("n2", signal.SIGKILL)
    await asyncio.sleep(2)
    await restart_node(cl, "n2")
    await asyncio.sleep(10)
    ev(h, "kill -9 n2 (2nd), restart after 2 s")
    cl.signal_node("n2", signal.SIGKILL)
    await asyncio.sleep(2)
    await restart_node(cl, "n2")
    return now()


async def f_node_stop(cl, h, secs, node):
    ev(h, f"SIGSTOP {node} for {secs:g} s")
    cl.signal_node(node, signal.SIGSTOP)
    await asyncio.sleep(secs)
    cl.signal_node(node, signal.SIGCONT)
    ev(h, f"SIGCONT {node}")
    return now()


async def f_redis_kill(cl, h, down):
    port, p, _ = cl.redis[0]
    ev(h, f"kill -9 redis (restart from AOF after {down:g} s)")
    p.kill_group()
    await asyncio.sleep(down)
    p.start()
    await cl.wait_redis(port)
    ev(h, "redis restarted")
    return now()


async def f_redis_stop(cl, h, secs):
    _, p, _ = cl.redis[0]
    ev(h, f"SIGSTOP redis for {secs:g} s")
    p.signal(signal.SIGSTOP)
    await asyncio.sleep(secs)
    p.signal(signal.SIGCONT)
    ev(h, "SIGCONT redis")
    return now()


async def f_rolling(cl, h):
    for n in NODES:
        ev(h, f"SIGTERM {n}")
        cl.signal_node(n, signal.SIGTERM)
        if not await cl.node_proc[n].wait_exit(20):
            ev(h, f"{n} did not exit within 20 s of SIGTERM: kill -9")
            cl.signal_node(n, signal.SIGKILL)
            await cl.node_proc[n].wait_exit(5)
        cl.node_state[n] = "killed"
        await restart_node(cl, n)
        await asyncio.sleep(2)
    return now()


async def f_failover(cl, h):
    idx, port, slot = cl.aip_master()
    ev(h, f"kill -9 the Redis master of slot {slot} ({{aip}}) on port {port}")
    p = cl.redis[idx][1]
    p.kill_group()
    others = [r[0] for i, r in enumerate(cl.redis) if i != idx]
    deadline = now() + 30
    while now() < deadline:
        try:
            nidx, nport, _ = cl.aip_master()
            info = cl.rcli(others[0], "CLUSTER", "INFO")
            if nport != port and "cluster_state:ok" in info:
                ev(h, f"replica on port {nport} promoted")
                break
        except Exception:
            pass
        await asyncio.sleep(0.25)
    else:
        ev(h, "no failover within 30 s")
    heal = now()
    p.start()  # the old master comes back (as a replica)
    await cl.wait_redis(port)
    ev(h, f"old master on port {port} restarted")
    return heal


async def f_device_flap(cl, h, rounds=6, every=2.0):
    flappers = cl.dev_ids[:3]
    for r in range(rounds):
        for i, cid in enumerate(flappers):
            n = NODES[(r + i + 1) % 3]
            cl.kill_device(cid)
            cl.start_device(cid, [cl.node_ws(n)])
        ev(h, f"flap {r + 1}/{rounds}: {', '.join(flappers)} killed and restarted on other nodes")
        await asyncio.sleep(every)
    return now()


FAULTS = {
    "node_kill_2s": ("kill -9 of node n2, restarted after 2 s", "single", lambda c, h: f_node_kill(c, h, 2)),
    "node_kill_10s": ("kill -9 of node n2, restarted after 10 s", "single", lambda c, h: f_node_kill(c, h, 10)),
    "node_kill_twice": ("n2 killed -9 twice within 30 s", "single", f_node_kill_twice),
    "node_stop_ttl": ("SIGSTOP n2 for 2x the node TTL (10 s), SIGCONT", "single",
                      lambda c, h: f_node_stop(c, h, 2 * NODE_TTL, "n2")),
    "node_stop_dispatch": ("SIGSTOP of an asking node (n1) mid-dispatch for 3 s", "single",
                           lambda c, h: f_node_stop(c, h, 3, "n1")),
    "redis_kill_2s": ("kill -9 redis, AOF restart after 2 s", "single", lambda c, h: f_redis_kill(c, h, 2)),
    "redis_kill_15s": ("kill -9 redis, AOF restart after 15 s", "single", lambda c, h: f_redis_kill(c, h, 15)),
    "redis_stop": ("SIGSTOP redis for 10 s", "single", lambda c, h: f_redis_stop(c, h, 10)),
    "rolling_restart": ("rolling restart of n1, n2, n3 (SIGTERM, restart, next)", "single", f_rolling),
    "redis_failover": ("Redis Cluster 3+3: kill -9 the master of {aip}", "cluster", f_failover),
    "device_flap": ("3 devices killed and restarted on another node every 2 s (6 rounds)", "single",
                    f_device_flap),
}
QUICK = ["node_kill_2s", "node_kill_10s", "node_stop_ttl", "redis_kill_2s", "redis_kill_15s", "device_flap"]


# --------------------------------------------------------------------------------------
# The checker.

def device_timeline(h):
    """client_id -> list of (t_registered, t_ended, server) from the devices' own logs and
    the harness's kills."""
    by_inc = collections.defaultdict(list)
    for e in h["device_log"]:
        by_inc[(e["client_id"], e["inc"])].append(e)
    killed = {(d["client_id"], d["inc"]): d["t_killed"] for d in h["devices"]}
    out = collections.defaultdict(list)
    for key, evs in by_inc.items():
        evs.sort(key=lambda e: e["t"] or 0)
        server, reg = None, None
        for e in evs:
            if e["msg"] == "connecting":
                server = e["server"]
            elif e["msg"] == "registered":
                reg = (e["t"], server)
            elif e["msg"] in ("disconnected; reconnecting", "stopped") and reg:
                out[key[0]].append((reg[0], e["t"], reg[1]))
                reg = None
        if reg:
            out[key[0]].append((reg[0], killed.get(key) or float("inf"), reg[1]))
    return out


def node_up_seconds(h, node, start, stop):
    """Seconds of [start, stop] during which `node`'s process was running (not killed,
    stopped or shutting down), from the harness's own node events."""
    up_since, total = None, 0.0
    evs = sorted((e for e in h["node_events"] if e["node"] == node), key=lambda e: e["t"])
    if not evs:
        return stop - start
    for e in evs + [{"t": stop, "what": "end"}]:
        t = min(max(e["t"], start), stop)
        if up_since is not None and e["what"] != "start" and e["what"] != "SIGCONT":
            total += max(0.0, t - up_since)
            up_since = None
        if e["what"] in ("start", "SIGCONT") and up_since is None:
            up_since = t
    return total


def check(h, cl_ports, heal, load_end, end):
    """Anomalies by invariant: {invariant: [example dicts]}."""
    A = collections.defaultdict(list)
    t0 = h["t0"]

    def rel(t):
        return None if t is None else round(t - t0, 2)

    reads = collections.defaultdict(list)
    for r in h["reads"]:
        reads[r["sid"]].append(r)
    for v in reads.values():
        v.sort(key=lambda r: r["t_sent"])
    execs = collections.defaultdict(list)
    for e in h["executions"]:
        execs[e["token"]].append(e)

    acked = {}  # sid -> {"token", "origin", "t", ...}
    for d in h["dispatches"]:
        if d["status"] == 200:
            sid = (d["body"] or {}).get("session_id") if isinstance(d["body"], dict) else None
            if not sid:
                A["acked_then_lost"].append({"token": d["token"], "why": "200 without session_id",
                                             "body": d["body"]})
                continue
            acked[sid] = {"token": d["token"], "origin": "http", "t": d["t_answer"],
                          "target": d["target"], "node": d["node"]}
    acks_by_sid = {}
    ends_by_conn_sid = {}
    for f in h["cframes"]:
        fr = f["frame"]
        sid = fr.get("session_id")
        if not sid:
            continue
        if fr.get("type") == "heartbeat" and fr.get("status") == "ok":
            acks_by_sid.setdefault(sid, f)
        elif fr.get("type") == "task_end":
            ends_by_conn_sid.setdefault((f["conn"], sid), f)
    ctask_by_token = {c["token"]: c for c in h["ctasks"]}
    for sid, f in acks_by_sid.items():
        c = ctask_by_token.get(sid)
        acked[sid] = {"token": sid, "origin": "constellation", "t": f["t"], "conn": f["conn"],
                      "target": c["target"] if c else None, "node": c["node"] if c else None}

    token_target = {d["token"]: d["target"] for d in h["dispatches"]}
    token_target.update({c["token"]: c["target"] for c in h["ctasks"]})

    # 1. No command run twice (nor on a device it was not sent to).
    for tok, es in execs.items():
        if len(es) > 1:
            A["command_run_twice"].append({"token": tok, "runs": [
                {"device": e["client_id"], "inc": e["inc"], "t": rel(e["t"])} for e in es]})
        tgt = token_target.get(tok)
        for e in es:
            if tgt and e["client_id"] != tgt:
                A["command_run_twice"].append({"token": tok, "why": f"ran on {e['client_id']}, sent to {tgt}"})

    # 2. Refused work that ran: a 503 (or any non-200 answer) / constellation error whose
    # token executed.
    for d in h["dispatches"]:
        if d["status"] is not None and d["status"] != 200 and d["token"] in execs:
            A["refused_but_executed"].append({
                "token": d["token"], "asked": d["node"], "status": d["status"], "body": d["body"],
                "answered_at": rel(d["t_answer"]), "executed_at": rel(execs[d["token"]][0]["t"]),
                "device": execs[d["token"]][0]["client_id"]})
    # A constellation task is answered by an ack (heartbeat with its session id) or an
    # `error` frame (which carries no session id): one not acked although its connection
    # lived 10 s past the send, whose token ran, was refused (or ignored) but executed.
    conns_by_id = {c["conn"]: c for c in h["conns"]}
    errors_by_conn = collections.defaultdict(list)
    for f in h["cframes"]:
        if f["frame"].get("type") == "error":
            errors_by_conn[f["conn"]].append(f)
    for c in h["ctasks"]:
        if c["token"] in acks_by_sid or c["token"] not in execs:
            continue
        conn = conns_by_id.get(c["conn"])
        closed = (conn or {}).get("t_close") or end
        if closed < c["t_sent"] + 10:
            continue  # the answer may have been lost with the connection
        err = next((f for f in errors_by_conn[c["conn"]] if f["t"] >= c["t_sent"]), None)
        A["refused_but_executed"].append({
            "token": c["token"], "constellation_on": c["node"], "sent_at": rel(c["t_sent"]),
            "answer": (err["frame"].get("error"), rel(err["t"])) if err else "no ack",
            "executed_at": rel(execs[c["token"]][0]["t"]), "device": execs[c["token"]][0]["client_id"]})

    # 3. Terminal results never change; 4. nothing stuck; 5. nothing acked then lost.
    for sid, a in acked.items():
        rs = [r for r in reads[sid] if r["status"] in (200, 404)]
        first_term = None
        changed = None
        for r in rs:
            if first_term is None:
                if r["status"] == 200 and r["state"] in TERMINAL:
                    first_term = r
                continue
            if r["t_sent"] < first_term["t_answer"]:
                continue  # concurrent with the first terminal read
            if r["status"] == 404:
                changed = changed or ("lost", r)
            elif r["digest"] != first_term["digest"]:
                changed = changed or ("changed", r)
        if changed:
            kind, r = changed
            ex = {"session": sid, "token": a["token"], "origin": a["origin"],
                  "first_read": {"node": first_term["node"], "at": rel(first_term["t_answer"]),
                                 "state": first_term["state"], "reason": first_term["reason"],
                                 "stdout": first_term["stdout"]},
                  "later_read": {"node": r["node"], "at": rel(r["t_answer"]), "status": r["status"],
                                 "state": r["state"], "reason": r["reason"], "error": r["error"],
                                 "stdout": r["stdout"]}}
            A["terminal_result_changed" if kind == "changed" else "acked_then_lost"].append(ex)
        finals = [r for r in rs if r["final"]]
        if not any(r["status"] == 200 for r in rs):
            A["acked_then_lost"].append({
                "session": sid, "token": a["token"], "origin": a["origin"], "asked": a.get("node"),
                "acked_at": rel(a["t"]), "why": "no node ever found it" if rs else "no read answered",
                "final_reads": [(r["node"], r["status"]) for r in finals]})
            continue
        lost_final = [r for r in finals if r["status"] == 404]
        if lost_final and not changed:
            A["acked_then_lost"].append({
                "session": sid, "token": a["token"], "origin": a["origin"],
                "why": "read before, 404 in the final reads",
                "final_reads": [(r["node"], r["status"], r["state"]) for r in finals]})
        stuck = [r for r in finals if r["status"] == 200 and r["state"] not in TERMINAL]
        if stuck or (finals and not any(r["status"] == 200 and r["state"] in TERMINAL for r in finals)
                     and not lost_final):
            r = stuck[0] if stuck else finals[0]
            A["session_stuck"].append({
                "session": sid, "token": a["token"], "origin": a["origin"], "asked": a.get("node"),
                "acked_at": rel(a["t"]), "final_read": {"node": r["node"], "at": rel(r["t_answer"]),
                                                      "status": r["status"], "state": r["state"]},
                "executed": a["token"] in execs})
        # A session read completed must have run, and printed its token.
        for r in rs:
            if r["status"] == 200 and r["state"] == "completed":
                if a["token"] not in execs or (r["stdout"] or "").strip() != a["token"]:
                    A["terminal_result_changed"].append({
                        "session": sid, "token": a["token"], "why": "read completed but the token "
                        + ("never ran" if a["token"] not in execs else f"is not its stdout ({r['stdout']!r})"),
                        "node": r["node"], "at": rel(r["t_answer"])})
                break

    # 6. Every acked constellation task got its task_end while its connection lived.
    conns = {c["conn"]: c for c in h["conns"]}
    for sid, f in acks_by_sid.items():
        conn = conns.get(f["conn"])
        end_f = ends_by_conn_sid.get((f["conn"], sid))
        fin = None
        for r in reads[sid]:
            if r["status"] == 200 and r["state"] in TERMINAL and r["finished_at"]:
                fin = r["finished_at"]
                stored = r["state"]
                break
        if end_f:
            st = end_f["frame"].get("status")
            if fin and (st == "completed") != (stored == "completed"):
                A["terminal_result_changed"].append({
                    "session": sid, "why": f"task_end {st} but stored {stored}",
                    "task_end_at": rel(end_f["t"])})
            continue
        if fin is None or conn is None:
            continue  # never terminal: reported as stuck / lost above
        closed = conn["t_close"] or end
        # The connection's node must have been running (not killed, not SIGSTOPped) for
        # 5 s of the time between the session's end and the connection's close: a frozen
        # node that is then declared lost closes its connections instead.
        live = node_up_seconds(h, conn["node"], fin, closed)
        if live > 5:
            A["task_end_missing"].append({
                "session": sid, "conn": f["conn"], "node": conn["node"], "acked_at": rel(f["t"]),
                "stored_end": rel(fin), "state": stored,
                "connection_lived_until": rel(closed) if conn["t_close"] else "end of run",
                "node_running_for_s": round(live, 1)})

    # 7. Every connected device listed by every node within PRESENCE_BOUND after healing.
    tl = device_timeline(h)
    ws_node = {f"ws://127.0.0.1:{p}/ws": n for n, p in cl_ports.items()}
    missing_first = {}
    for snap in h["presence"]:
        if snap["status"] != 200 or snap["devices"] is None:
            continue
        if snap["t_sent"] < heal + PRESENCE_BOUND:
            continue
        for cid, spans in tl.items():
            span = next((s for s in spans if s[0] <= snap["t_sent"] - PRESENCE_BOUND
                         and s[1] >= snap["t_answer"]), None)
            if not span:
                continue
            listed = snap["devices"].get(cid)
            want = ws_node.get(span[2])
            if listed is None or (want and listed != want):
                key = (cid, span[0])
                if key not in missing_first:
                    missing_first[key] = {
                        "device": cid, "connected_to": want, "registered_at": rel(span[0]),
                        "first_missing_at": rel(snap["t_sent"]), "nodes_not_listing": {},
                        "snapshots": 0}
                m = missing_first[key]
                m["snapshots"] += 1
                m["nodes_not_listing"][snap["node"]] = listed or "absent"
                m["last_missing_at"] = rel(snap["t_sent"])
    for v in missing_first.values():
        A["presence_missing"].append(v)
    return A


def recovery(h, heal, dev_ids):
    """Seconds from heal to (a) a dispatch answered 200 that completed, for every device;
    (b) the first presence round where every node lists every device."""
    done = {}
    final_state = {}
    for r in h["reads"]:
        if r["status"] == 200 and r["state"] in TERMINAL:
            final_state[r["sid"]] = r["state"]
    for d in sorted(h["dispatches"], key=lambda d: d["t_answer"] or 0):
        if d["t_sent"] < heal or d["status"] != 200 or not isinstance(d["body"], dict):
            continue
        if final_state.get(d["body"].get("session_id")) == "completed" and d["target"] not in done:
            done[d["target"]] = d["t_answer"] - heal
    disp = max(done.values()) if len(done) == len(dev_ids) else None
    rounds = collections.defaultdict(dict)
    for s in h["presence"]:
        if s["t_sent"] >= heal and s["status"] == 200:
            rounds[s["round"]][s["node"]] = s
    pres = None
    for k in sorted(rounds):
        snaps = rounds[k]
        if len(snaps) == 3 and all(set(dev_ids) <= set(s["devices"]) for s in snaps.values()):
            pres = max(s["t_answer"] for s in snaps.values()) - heal
            break
    return disp, pres, len(done)


# --------------------------------------------------------------------------------------
# A scenario.

async def scenario(name, args, bin_path):
    desc, redis_mode, fault = FAULTS[name]
    base = tempfile.mkdtemp(prefix=f"aip-faults-{name}-")
    _TMPDIRS.append(base)
    h = new_history(name)
    h["description"] = desc
    h["dir"] = base
    cl = Cluster(bin_path, args.devices, redis_mode, h, base)
    load = None
    t_start = now()
    try:
        print(f"== {name}: {desc}", flush=True)
        await cl.start()
        h["t0"] = now()
        print(f"    cluster up in {h['t0'] - t_start:.1f} s ({args.devices} devices)", flush=True)
        load = Load(cl, h, rate=args.rate)
        load.start()
        warm = max(4.0, args.seconds * 0.25)
        await asyncio.sleep(warm)
        heal = await fault(cl, h)
        ev(h, "healed")
        h["heal"] = heal
        load_until = max(h["t0"] + args.seconds, heal + max(8.0, args.seconds * 0.4))
        await asyncio.sleep(max(0.0, load_until - now()))
        await load.stop_load()
        load_end = now()
        ev(h, f"load stopped ({len(h['dispatches'])} dispatches, {len(h['ctasks'])} constellation tasks)")
        bound = max(heal + STUCK_BOUND, load_end + ACCEPT_TIMEOUT + COMMAND_TIMEOUT + 3)
        # At least PRESENCE_BOUND + a few snapshots after heal.
        bound_presence = heal + PRESENCE_BOUND + 4
        await load.settle(bound)
        await asyncio.sleep(max(0.0, bound_presence - now()))
        await load.final_reads(1)
        await asyncio.sleep(2)
        await load.final_reads(2)
        end = now()
        await load.finish()
        cl.collect()
        ports = h["ports"] = dict(cl.node_port)
        h["load_end"], h["end"] = load_end, end
        anomalies = check(h, ports, heal, load_end, end)
        disp_rec, pres_rec, n_rec = recovery(h, heal, cl.dev_ids)
        return h, summarize(h, anomalies, disp_rec, pres_rec, n_rec, len(cl.dev_ids), now() - t_start)
    finally:
        if load is not None:
            load.running = False
            load.reading_tail = False
        cl.stop()
        if KEEP:
            print(f"    kept {base}", flush=True)


def summarize(h, anomalies, disp_rec, pres_rec, n_rec, n_dev, took):
    c = collections.Counter()
    for d in h["dispatches"]:
        if d["status"] in (200, 503, 404):
            c[str(d["status"])] += 1
        elif d["status"] is not None:
            c["other"] += 1
            c[f"http {d['status']}"] += 1
        else:
            c["other"] += 1
            c[f"no answer ({d['no_answer']})"] += 1
    acked_sids = {f["frame"]["session_id"] for f in h["cframes"]
                  if f["frame"].get("type") == "heartbeat" and f["frame"].get("session_id")}
    acks = len(acked_sids)
    ends_unacked = sum(1 for f in h["cframes"] if f["frame"].get("type") == "task_end"
                       and f["frame"].get("session_id") not in acked_sids)
    errs = sum(1 for f in h["cframes"] if f["frame"].get("type") == "error")
    ends = sum(1 for f in h["cframes"] if f["frame"].get("type") == "task_end")
    return {
        "scenario": h["scenario"], "description": h["description"],
        "operations": len(h["dispatches"]) + len(h["ctasks"]),
        "dispatches": len(h["dispatches"]), "status": dict(c),
        "constellation": {"tasks": len(h["ctasks"]), "acks": acks, "errors": errs, "task_ends": ends,
                          "task_ends_without_ack": ends_unacked},
        "reads": len(h["reads"]), "presence_snapshots": len(h["presence"]),
        "executions": len(h["executions"]),
        "anomalies": {k: {"count": len(v), "examples": v[:3]} for k, v in sorted(anomalies.items()) if v},
        "recovery": {"dispatch_all_devices_s": None if disp_rec is None else round(disp_rec, 2),
                     "devices_with_completed_dispatch": f"{n_rec}/{n_dev}",
                     "listed_everywhere_s": None if pres_rec is None else round(pres_rec, 2)},
        "events": [{"at": round(e["t"] - h["t0"], 2), "what": e["what"]} for e in h["events"]],
        "seconds": round(took, 1),
    }


INVARIANTS = ["session_stuck", "terminal_result_changed", "command_run_twice", "acked_then_lost",
              "refused_but_executed", "task_end_missing", "presence_missing"]


def print_table(rows):
    print()
    hdr = f"{'fault':<20}{'ops':>6}{'200':>6}{'503':>6}{'404':>6}{'other':>6}  {'k-ack/err/end':<15}" \
          f"{'anomalies':>10}  {'recover(disp/list)':<20}{'time':>7}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        if "error" in r:
            print(f"{r['scenario']:<20} HARNESS ERROR: {r['error']}")
            continue
        s = r["status"]
        k = r["constellation"]
        na = sum(v["count"] for v in r["anomalies"].values())
        rec = r["recovery"]
        fmt = lambda x: "never" if x is None else f"{x:.1f}s"
        print(f"{r['scenario']:<20}{r['operations']:>6}{s.get('200', 0):>6}{s.get('503', 0):>6}"
              f"{s.get('404', 0):>6}{s.get('other', 0):>6}  {k['acks']}/{k['errors']}/{k['task_ends']:<9}"
              f"{na:>10}  {fmt(rec['dispatch_all_devices_s']) + '/' + fmt(rec['listed_everywhere_s']):<20}"
              f"{r['seconds']:>6.0f}s")
    print()
    for r in rows:
        if "error" in r:
            continue
        other = {k: v for k, v in r["status"].items() if k not in ("200", "503", "404", "other")}
        print(f"-- {r['scenario']}: {r['description']}")
        print(f"   timeline: " + "; ".join(f"+{e['at']}s {e['what']}" for e in r["events"]))
        if other:
            print(f"   other answers: {other}")
        k = r["constellation"]
        print(f"   constellation: {k['tasks']} tasks, {k['acks']} acked, {k['errors']} errors, "
              f"{k['task_ends']} task_ends ({k['task_ends_without_ack']} for a task never acked; not an invariant)")
        secs = lambda x: "never" if x is None else f"{x} s after heal"
        print(f"   recovery: every device ran a dispatch {secs(r['recovery']['dispatch_all_devices_s'])} "
              f"({r['recovery']['devices_with_completed_dispatch']}); all devices listed by all nodes "
              f"{secs(r['recovery']['listed_everywhere_s'])}")
        if not r["anomalies"]:
            print("   anomalies: none")
        for inv in INVARIANTS:
            a = r["anomalies"].get(inv)
            if not a:
                continue
            print(f"   ANOMALY {inv}: {a['count']}")
            for ex in a["examples"][:2]:
                print(f"      e.g. {json.dumps(ex, default=str)[:600]}")
        print()



# --------------------------------------------------------------------------------------
# The checker's own test: a made-up history with exactly one violation of each invariant
# next to cases that must not count (--self-test; no processes started).

def self_test():
    h = new_history("self-test")
    t0 = h["t0"] = 1000.0
    heal, end = 1010.0, 1040.0

    def rd(sid, t, state, node="n1", final=False, reason=None, stdout=None, status=200, digest=None):
        h["reads"].append({"sid": sid, "node": node, "t_sent": t, "t_answer": t + 0.01,
                           "status": status, "state": state if status == 200 else None,
                           "reason": reason, "error": None, "final": final, "stdout": stdout,
                           "digest": digest or f"{state}/{reason}/{stdout}",
                           "finished_at": t - 0.5 if state in TERMINAL else None})

    def disp(tok, status, sid=None, target="d1"):
        h["dispatches"].append({"token": tok, "target": target, "node": "n1", "t_sent": t0 + 1,
                                "t_answer": t0 + 1.1, "status": status, "no_answer": None,
                                "body": {"session_id": sid} if sid else {"detail": "x"}})

    def ran(tok, n=1, dev="d1"):
        for _ in range(n):
            h["executions"].append({"token": tok, "client_id": dev, "inc": 0, "t": t0 + 2})

    # fine: completed, read the same everywhere
    disp("TA", 200, "sA"); ran("TA")
    rd("sA", 1005, "running"); rd("sA", 1006, "completed", stdout="TA\n")
    for n in NODES:
        rd("sA", 1035, "completed", node=n, final=True, stdout="TA\n")
    # fine: failed node_lost without ever reading otherwise; 404 for a device not there
    disp("TH", 200, "sH"); ran("TH")
    rd("sH", 1003, "running"); rd("sH", 1020, "failed", reason="node_lost", final=True)
    disp("TG", 404)
    # one each
    disp("TB", 200, "sB"); ran("TB", 2)                                   # run twice
    rd("sB", 1035, "completed", final=True, stdout="TB\n")
    disp("TC", 503); ran("TC")                                            # 503 but ran
    disp("TD", 200, "sD"); ran("TD")                                      # changed
    rd("sD", 1005, "completed", stdout="TD\n")
    rd("sD", 1035, "failed", reason="node_lost", node="n2", final=True)
    disp("TE", 200, "sE"); ran("TE")                                      # stuck
    rd("sE", 1035, "running", final=True)
    disp("TF", 200, "sF")                                                 # lost
    rd("sF", 1035, None, status=404, final=True)
    h["node_events"] += [{"node": n, "t": t0 - 1, "what": "start"} for n in NODES]
    # a 4th acked task on n2, which is frozen from before its end until its connection
    # closes (declared lost): no task_end expected
    h["node_events"] += [{"node": "n2", "t": 1002.0, "what": "SIGSTOP"},
                         {"node": "n2", "t": 1012.0, "what": "SIGCONT"}]
    h["conns"].append({"conn": "c3", "kid": "k3", "node": "n2", "t_open": t0, "t_close": 1012.2})
    h["ctasks"].append({"token": "K4", "kid": "k3", "conn": "c3", "node": "n2", "target": "d1",
                        "t_sent": t0 + 1})
    h["cframes"].append({"conn": "c3", "t": t0 + 1.1, "frame": {"type": "heartbeat", "status": "ok",
                                                                "session_id": "K4"}})
    ran("K4")
    rd("K4", 1004.0, "completed", stdout="K4\n", final=True)
    # constellation: c1 lives to the end; c2 dies before its session ends
    h["conns"] += [{"conn": "c1", "kid": "k1", "node": "n1", "t_open": t0, "t_close": end},
                   {"conn": "c2", "kid": "k2", "node": "n2", "t_open": t0, "t_close": 1003.0}]
    for sid, conn, fin, with_end in (("K1", "c1", 1002.5, False), ("K2", "c1", 1002.5, True),
                                     ("K3", "c2", 1004.5, False)):
        h["ctasks"].append({"token": sid, "kid": "k", "conn": conn, "node": "n1", "target": "d1",
                            "t_sent": t0 + 1})
        h["cframes"].append({"conn": conn, "t": t0 + 1.1, "frame": {"type": "heartbeat",
                                                                    "status": "ok", "session_id": sid}})
        if with_end:
            h["cframes"].append({"conn": conn, "t": fin, "frame": {"type": "task_end",
                                                                   "status": "completed", "session_id": sid}})
        ran(sid)
        rd(sid, fin + 0.5, "completed", stdout=f"{sid}\n", final=True)
    # presence: d1 connected since t0, missing from n2 after heal; d2 connected too recently
    h["devices"] += [{"client_id": "d1", "inc": 0, "t_killed": None},
                     {"client_id": "d2", "inc": 0, "t_killed": None}]
    h["device_log"] += [
        {"client_id": "d1", "inc": 0, "t": t0, "msg": "connecting", "server": "ws://127.0.0.1:1/ws"},
        {"client_id": "d1", "inc": 0, "t": t0 + 0.1, "msg": "registered", "server": None},
        {"client_id": "d2", "inc": 0, "t": 1014.0, "msg": "connecting", "server": "ws://127.0.0.1:1/ws"},
        {"client_id": "d2", "inc": 0, "t": 1014.1, "msg": "registered", "server": None}]
    for n in NODES:
        h["presence"].append({"node": n, "round": 1, "t_sent": 1016.0, "t_answer": 1016.1,
                              "status": 200, "devices": {} if n == "n2" else {"d1": "n1"}})
    got = check(h, {"n1": 1, "n2": 2, "n3": 3}, heal, 1030.0, end)
    counts = {k: len(v) for k, v in got.items() if v}
    want = {k: 1 for k in INVARIANTS}
    for k in INVARIANTS:
        print(f"  {k:<26} found {counts.get(k, 0)} (want 1)")
    if counts != want:
        print(json.dumps(got, indent=1, default=str))
        print("self-test: FAILED")
        return 1
    print("self-test: the checker finds each planted anomaly once and nothing else")
    return 0

# --------------------------------------------------------------------------------------

def main():
    global KEEP, LONG_FRACTION
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faults", help="comma-separated: " + ",".join(FAULTS))
    ap.add_argument("--quick", action="store_true",
                    help=f"the CI subset ({','.join(QUICK)}), shorter load, a 6-minute budget")
    ap.add_argument("--devices", type=int, help="aip device processes (default 12 quick, 30 full)")
    ap.add_argument("--seconds", type=float, help="seconds of load per scenario (default 16 quick, 30 full)")
    ap.add_argument("--rate", type=float, default=20.0, help="HTTP dispatches per second (default 20)")
    ap.add_argument("--long", type=float, default=LONG_FRACTION,
                    help="share of commands that sleep 0.5-4 s (default %(default)s)")
    ap.add_argument("--json", help="write the history and the table to this file")
    ap.add_argument("--budget", type=float, help="total seconds before remaining scenarios are skipped "
                    "(default 330 quick, 3600 full)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directories (logs)")
    ap.add_argument("--list", action="store_true", help="list the faults and exit")
    ap.add_argument("--recheck", metavar="JSON",
                    help="run the checker again over the histories of a --json file and exit")
    ap.add_argument("--self-test", action="store_true",
                    help="check the checker on a made-up history (no processes) and exit")
    ap.add_argument("--seed", type=int, help="random seed")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    if args.recheck:
        with open(args.recheck) as f:
            saved = json.load(f)
        total = 0
        for h in saved["histories"]:
            got = check(h, h.get("ports", {}), h["heal"], h.get("load_end", h["heal"]),
                        h.get("end") or max(r["t_answer"] for r in h["reads"]))
            counts = {k: len(v) for k, v in got.items() if v}
            total += sum(counts.values())
            print(f"{h['scenario']:<20} {counts or 'no anomalies'}")
            for k, v in got.items():
                for ex in v[:2]:
                    print(f"    {k}: {json.dumps(ex, default=str)[:400]}")
        return 1 if total else 0
    if args.list:
        for k, (d, m, _) in FAULTS.items():
            print(f"{k:<20} {d}{'  [quick]' if k in QUICK else ''}")
        return 0
    KEEP = args.keep
    if self_test() != 0:
        return 2
    LONG_FRACTION = args.long
    random.seed(args.seed)
    names = args.faults.split(",") if args.faults else (QUICK if args.quick else list(FAULTS))
    for n in names:
        if n not in FAULTS:
            ap.error(f"unknown fault {n!r}; known: {', '.join(FAULTS)}")
    args.devices = args.devices or (12 if args.quick else 30)
    args.seconds = args.seconds or (16.0 if args.quick else 30.0)
    budget = args.budget or (330.0 if args.quick else 3600.0)
    bin_path = os.environ.get("AIP_BIN") or os.path.join(ROOT, "target", "debug", "aip")
    if not os.path.isabs(bin_path):
        bin_path = os.path.join(ROOT, bin_path)
    if not os.access(bin_path, os.X_OK):
        print(f"faults: {bin_path} is not an executable (set AIP_BIN or build it)", file=sys.stderr)
        return 2
    started = now()
    rows, histories = [], []
    harness_error = False
    for name in names:
        left = budget - (now() - started)
        if left < 40:
            rows.append({"scenario": name, "error": f"skipped: the {budget:.0f} s budget is spent"})
            harness_error = True
            continue
        try:
            h, row = asyncio.run(asyncio.wait_for(scenario(name, args, bin_path), timeout=min(left, 240)))
            rows.append(row)
            histories.append(h)
            na = sum(v["count"] for v in row["anomalies"].values())
            kinds = ", ".join("%s %d" % (k, v["count"]) for k, v in row["anomalies"].items()) or "none"
            print(f"    done in {row['seconds']:.0f} s: {na} anomalies ({kinds})", flush=True)
        except asyncio.TimeoutError:
            rows.append({"scenario": name, "error": "scenario over its time limit"})
            harness_error = True
        except Exception as e:
            traceback.print_exc()
            rows.append({"scenario": name, "error": f"{type(e).__name__}: {e}"})
            harness_error = True
        finally:
            cleanup_all()
    print_table(rows)
    total = sum(sum(v["count"] for v in r.get("anomalies", {}).values()) for r in rows)
    print(f"faults: {len(rows)} scenarios in {now() - started:.0f} s, {total} anomalies"
          + (", harness errors" if harness_error else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"table": rows, "histories": histories}, f, default=str)
        print(f"faults: history and table written to {args.json}")
    if total:
        return 1
    return 2 if harness_error else 0


if __name__ == "__main__":
    sys.exit(main())
