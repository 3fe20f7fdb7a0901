"""A minimal node agent for the kubenas test cluster: the stand-in for the
kubelet *and* the container runtime.

kubenas-testcluster runs a real control plane but no kubelet, so pods get
scheduled and never run. This agent registers a Node (cpu, memory, pods and an
extended GPU resource such as ``nvidia.com/gpu``), renews its Lease, and runs
every pod bound to it as local processes:

* each container's ``command`` + ``args`` (the image is ignored: ``python`` is
  this virtualenv's interpreter, its bin/ is first on PATH, anything else comes
  from PATH, e.g. ``redis-server``), with the kubelet's env semantics (value,
  valueFrom, envFrom, service links, ``$(VAR)`` expansion);
* one network namespace per pod (a veth into this agent's bridge, one pod IP in
  10.244.<n>.0/24), so two pods can both listen on 0.0.0.0:6379, and one mount +
  UTS namespace per container: volumes (configMap, secret, emptyDir, projected
  incl. the service-account token, downwardAPI, hostPath, PVC) are bind-mounted
  at their mountPath, the pod's own /etc/hosts likewise, hostname = pod name;
* Services: pods route to a small "service" namespace of this agent on the
  bridge, where each Service's ClusterIP:port is served by a userspace proxy
  (like kube-proxy's old userspace mode) forwarding to ready endpoints from the
  EndpointSlices (port -> targetPort included). ``<svc>``, ``<svc>.<ns>``,
  ``<svc>.<ns>.svc[.cluster.local]`` resolve through the pod's /etc/hosts (its
  resolv.conf points at nothing, so other names fail at once). The
  ``kubernetes`` Service reaches the API server: in-cluster config works;
* the kubelet's side of the API: pod status (phase, podIP, conditions,
  containerStatuses), readiness/liveness/startup probes, restartPolicy with
  backoff, graceful deletion (SIGTERM, grace capped by --max-grace, SIGKILL,
  delete with grace 0), and a hostPath PersistentVolume for each pending PVC.
  Container output goes to ``<data-dir>/logs/<ns>_<pod>_<container>.log``.

What it does not do: images (every container sees the host's filesystem and
programs), cgroups and resource limits (capacity is only advertised), user IDs
and securityContext (all runs as root), real isolation (only network, mounts
and hostname are private), UDP Services, NetworkPolicy, a DNS server (names
come from /etc/hosts), hostNetwork pods reaching ClusterIPs, kubelet's HTTP API
(no ``kubectl logs``/``exec``). Needs root, iproute2 and util-linux (nsenter).

Processes must listen on their pod IP or 0.0.0.0 (inside their namespace both
are private to the pod); the pod IP is what Services and probes connect to.

    python -m tests.support.node_agent --kubeconfig K --data-dir D [--gpus N]

or, in tests: ``with start_node_agent(cluster, tmp_path / "node", gpus=1) as agent``.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import itertools
import json
import os
import queue
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

# Keep module-level imports to the standard library: this file is also the
# launcher that runs (with ``python -I -S``) in front of every container.

AGENT_FILE = os.path.abspath(__file__)
LOCK_DIR = Path("/run/kubenas-node-agent")
ETC_HOSTS = Path("/etc/hosts")
MAX_SUBNETS = 200  # pod subnets 10.244.0.0/24 .. 10.244.199.0/24, one per running agent
CLUSTER_DOMAIN = "cluster.local"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWNET = 0x00020000, 0x04000000, 0x40000000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} node-agent: {message}", file=sys.stderr, flush=True)


def rfc3339(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def micro_time() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- the launcher: runs in each container's process, then execs the command --------

def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    return libc


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _enter_netns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        _check(_libc().setns(fd, CLONE_NEWNET), f"setns {path}")
    finally:
        os.close(fd)


def _covers(target: str, path: str) -> bool:
    target = target.rstrip("/") or "/"
    return path == target or path.startswith(target if target == "/" else target + "/")


def _image_paths() -> list[str]:
    """Stand-ins for an image's contents: this checkout (the editable install) and the venv."""
    return sorted({str(Path(__file__).resolve().parents[2]), os.path.realpath(sys.prefix)})


def exec_container(spec_path: str, argv: list[str]) -> None:
    """Join the pod's network namespace, take a private mount and UTS namespace,
    bind the volumes, chdir, exec. The environment is already the container's."""
    try:
        spec = json.loads(Path(spec_path).read_text())
        libc = _libc()
        if spec.get("netns"):
            _enter_netns(spec["netns"])
        _check(libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare")
        _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
        # Hold every source open before the first mount: a volume on /tmp must not
        # hide another volume's source (or the code) that lives under /tmp.
        sources = [os.open(m["source"], os.O_PATH) for m in spec["mounts"]]
        # What a real image carries, the code and the interpreter, no volume hides.
        image = [p for p in _image_paths() if any(_covers(m["target"], p) for m in spec["mounts"])]
        image_fds = [(p, os.open(p, os.O_PATH)) for p in image]
        for m, fd in zip(spec["mounts"], sources):
            dst = m["target"].encode()
            _check(libc.mount(f"/proc/self/fd/{fd}".encode(), dst, None, MS_BIND | MS_REC, None),
                   f"bind {m['source']} on {m['target']}")
            if m.get("readOnly"):
                _check(libc.mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None), f"remount {m['target']} ro")
        for path, fd in image_fds:
            os.makedirs(path, exist_ok=True)
            _check(libc.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None, MS_BIND | MS_REC, None),
                   f"keep {path} visible")
        socket.sethostname(spec["hostname"])
        if spec.get("explicitWorkingDir"):
            os.makedirs(spec["workingDir"], exist_ok=True)  # as runc does
        elif not os.path.isdir(spec["workingDir"]):
            spec["workingDir"] = "/"  # the default (the agent's cwd) is hidden by a mount
        os.chdir(spec["workingDir"])
        os.execvpe(argv[0], argv, os.environ)
    except OSError as e:
        print(f"node-agent: cannot start {argv[:1]}: {e}", file=sys.stderr, flush=True)
        os._exit(127)


# --- the Kubernetes API, as plain dicts ---------------------------------------------

class KubeError(Exception):
    def __init__(self, status: int, body: bytes | str):
        self.status = status
        super().__init__(f"HTTP {status}: {body[:500]!r}")


class Kube:
    """A thin JSON client over the kubernetes package's REST layer (auth, TLS)."""

    def __init__(self, kubeconfig: str):
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        cfg.connection_pool_maxsize = 16
        self.server = cfg.host
        self._api = client.ApiClient(cfg)

    def request(self, method: str, path: str, body: Any = None, query: dict | None = None,
                content_type: str = "application/json", timeout: Any = 30, stream: bool = False) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        method, url, headers, body, _ = self._api.param_serialize(
            method, path, query_params=list((query or {}).items()) or None,
            header_params=headers, body=body, auth_settings=["BearerToken"],
        )
        resp = self._api.call_api(method, url, header_params=headers, body=body, _request_timeout=timeout)
        if stream and 200 <= resp.status < 300:
            return resp.response
        raw = resp.read()
        if not 200 <= resp.status < 300:
            raise KubeError(resp.status, raw)
        return json.loads(raw) if raw else {}

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query or None)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def patch(self, path: str, body: Any, strategic: bool = True) -> Any:
        kind = "application/strategic-merge-patch+json" if strategic else "application/merge-patch+json"
        return self.request("PATCH", path, body, content_type=kind)

    def delete(self, path: str, body: Any = None) -> Any:
        return self.request("DELETE", path, body)

    def watch(self, path: str, resource_version: str, query: dict) -> Iterator[tuple[str, dict]]:
        """One watch request; ends when the server closes it (timeoutSeconds)."""
        from kubernetes.watch.watch import iter_resp_lines

        q = dict(query, watch="true", resourceVersion=resource_version, allowWatchBookmarks="true",
                 timeoutSeconds="60")
        resp = self.request("GET", path, query=q, timeout=(10, 90), stream=True)
        try:
            for line in iter_resp_lines(resp):
                if line:
                    event = json.loads(line)
                    yield event["type"], event["object"]
        finally:
            resp.release_conn()


def _key(obj: dict) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"]


class Informer:
    """List + watch one resource into a dict (key "ns/name"), relisting on any error."""

    def __init__(self, kube: Kube, path: str, on_change: Callable[[], None], **query: str):
        self.kube, self.path, self.query, self.on_change = kube, path, query, on_change
        self.items: dict[str, dict] = {}
        self.version = 0  # bumped on every change
        self.synced = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._run, name=f"informer {path}", daemon=True).start()

    def snapshot(self) -> dict[str, dict]:
        with self._lock:
            return dict(self.items)

    def stop(self) -> None:
        self._stop.set()

    def _changed(self) -> None:
        self.version += 1
        self.on_change()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                listed = self.kube.get(self.path, **self.query)
                with self._lock:
                    self.items = {_key(o): o for o in listed.get("items") or []}
                self.synced.set()
                self._changed()
                rv = listed["metadata"]["resourceVersion"]
                while not self._stop.is_set():
                    for kind, obj in self.kube.watch(self.path, rv, self.query):
                        if kind == "ERROR":  # e.g. 410 Gone: the version is too old, relist
                            raise KubeError(obj.get("code", 0), json.dumps(obj))
                        rv = obj["metadata"]["resourceVersion"]
                        if kind == "BOOKMARK":
                            continue
                        with self._lock:
                            if kind == "DELETED":
                                self.items.pop(_key(obj), None)
                            else:
                                self.items[_key(obj)] = obj
                        self._changed()
                        if self._stop.is_set():
                            return
            except Exception as e:  # noqa: BLE001 - any failure: relist after a pause
                if not self._stop.is_set():
                    log(f"watch {self.path}: {type(e).__name__}: {e}; relisting")
                    self._stop.wait(1)


# --- pod networking: one bridge per agent, one network namespace per pod ------------

def run_ip(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, input=input)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _kill_netns_processes(netns: str) -> None:
    pids = run_ip("netns", "pids", netns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def cleanup_subnet(index: int) -> None:
    """Remove what an agent on this subnet left (its lock must be held)."""
    prefix = f"kn{index}-"
    for line in run_ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(prefix):
            _kill_netns_processes(name)
            run_ip("link", "delete", f"kn{index}v{name[len(prefix):]}", check=False)
            run_ip("netns", "delete", name, check=False)
    run_ip("link", "delete", f"knbr{index}", check=False)


def lock_subnet(index: int, blocking: bool = False) -> int | None:
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK_DIR / f"subnet-{index}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@dataclass
class Sandbox:
    netns: str  # name under /run/netns
    veth: str  # host side
    ip: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.netns}"


class Network:
    """10.244.<index>.0/24 on bridge knbr<index>; the gateway .1 is the node's IP.

    The subnet is leased with an flock, so agents of concurrent test runs on one
    machine never share addresses, and a crashed agent's leftovers are removed
    by the next one to take its subnet.
    """

    def __init__(self) -> None:
        for index in range(MAX_SUBNETS):
            fd = lock_subnet(index)
            if fd is not None:
                self.index, self._lock_fd = index, fd
                break
        else:
            raise RuntimeError(f"all {MAX_SUBNETS} pod subnets are in use")
        self.bridge = f"knbr{self.index}"
        self.gateway = f"10.244.{self.index}.1"
        self.cidr = f"10.244.{self.index}.0/24"
        # The Services' namespace: ClusterIPs are local there, and the pods'
        # default route points at it.
        self.services = Sandbox(netns=f"kn{self.index}-svc", veth=f"kn{self.index}vsvc", ip=f"10.244.{self.index}.254")
        # Addresses are handed out round-robin, so a freed one is not reused
        # while other pods may still have its old MAC in their neighbour cache.
        self._free = deque(f"10.244.{self.index}.{i}" for i in range(2, 254))
        self._serial = itertools.count(1)

    def setup(self) -> None:
        cleanup_subnet(self.index)
        run_ip("link", "add", self.bridge, "type", "bridge")
        run_ip("address", "add", f"{self.gateway}/24", "dev", self.bridge)
        run_ip("link", "set", self.bridge, "up")
        self._add_namespace(self.services)
        # Forwarding on, without routes: packets for anywhere else get an
        # ICMP "unreachable" back at once, instead of silence.
        run_ip("netns", "exec", self.services.netns, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")

    def _add_namespace(self, sb: Sandbox, default_route: str | None = None) -> None:
        run_ip("netns", "add", sb.netns)
        run_ip("link", "add", sb.veth, "type", "veth", "peer", "name", "eth0", "netns", sb.netns)
        run_ip("link", "set", sb.veth, "master", self.bridge, "up")
        run_ip("-n", sb.netns, "-batch", "-", input=(
            "link set lo up\n"
            f"address add {sb.ip}/24 dev eth0\n"
            "link set eth0 up\n"
            + (f"route add default via {default_route}\n" if default_route else "")
        ))

    def create_sandbox(self) -> Sandbox:
        if not self._free:
            raise RuntimeError("no free pod IP")
        n = next(self._serial)
        sb = Sandbox(netns=f"kn{self.index}-{n}", veth=f"kn{self.index}v{n}", ip=self._free.popleft())
        try:
            self._add_namespace(sb, default_route=self.services.ip)
        except Exception:
            self.destroy_sandbox(sb)
            raise
        return sb

    def destroy_sandbox(self, sb: Sandbox) -> None:
        _kill_netns_processes(sb.netns)
        run_ip("link", "delete", sb.veth, check=False)
        run_ip("netns", "delete", sb.netns, check=False)
        self._free.append(sb.ip)

    def teardown(self) -> None:
        cleanup_subnet(self.index)
        os.close(self._lock_fd)


# --- Services: a userspace proxy listening on ClusterIPs inside each pod ------------

def _listen_in_netns(netns_path: str, addrs: list[tuple[str, int]]) -> dict[tuple[str, int], socket.socket]:
    """Open listening sockets inside a network namespace (from a throwaway thread:
    setns changes only the calling thread, and a socket keeps its namespace)."""
    result: dict[tuple[str, int], socket.socket] = {}
    errors: list[BaseException] = []

    def work() -> None:
        try:
            _enter_netns(netns_path)
            for addr in addrs:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(addr)
                s.listen(128)
                s.setblocking(False)
                result[addr] = s
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            errors.append(e)

    t = threading.Thread(target=work, name="netns-listen")
    t.start()
    t.join()
    if errors:
        for s in result.values():
            s.close()
        raise errors[0]
    return result


class ServiceProxy:
    """ClusterIP:port -> one of the ready endpoints, for connections from pods.

    The ClusterIPs are addresses of the agent's Services namespace, where a
    listener per Service port accepts what the pods send there; connections are
    forwarded from the node's namespace to the endpoint (pod IP:targetPort, or
    the API server). A Service without ready endpoints resets the connection.
    """

    def __init__(self, where: Sandbox) -> None:
        import asyncio

        self._asyncio = asyncio
        self.where = where
        self.loop = asyncio.new_event_loop()
        self.routes: dict[tuple[str, int], list[tuple[str, int]]] = {}
        self._listeners: dict[tuple[str, int], Any] = {}  # addr -> future of its accept loop
        self._tasks: set = set()
        self._rr = itertools.count()
        threading.Thread(target=self.loop.run_forever, name="service-proxy", daemon=True).start()

    def set_routes(self, routes: dict[tuple[str, int], list[tuple[str, int]]]) -> None:
        self.routes = routes
        for addr in set(self._listeners) - set(routes):
            self._listeners.pop(addr).cancel()
        new = sorted(set(routes) - set(self._listeners))
        if not new:
            return
        ips = sorted({ip for ip, _ in new})
        run_ip("-n", self.where.netns, "-batch", "-", input="".join(f"address replace {ip}/32 dev lo\n" for ip in ips))
        for addr, sock in _listen_in_netns(self.where.path, new).items():
            self._listeners[addr] = self._asyncio.run_coroutine_threadsafe(self._serve(sock, addr), self.loop)

    async def _serve(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        try:
            while True:
                conn, _ = await self.loop.sock_accept(sock)
                task = self.loop.create_task(self._forward(conn, addr))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            sock.close()

    async def _forward(self, conn: socket.socket, addr: tuple[str, int]) -> None:
        asyncio = self._asyncio
        backends = self.routes.get(addr) or []
        upstream = None
        if backends:
            host, port = backends[next(self._rr) % len(backends)]
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                upstream = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        if upstream is None:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            return
        up_reader, up_writer = upstream
        down_reader, down_writer = await asyncio.open_connection(sock=conn)
        pipes = {asyncio.ensure_future(self._pipe(down_reader, up_writer)),
                 asyncio.ensure_future(self._pipe(up_reader, down_writer))}
        try:
            done, pending = await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
            for t in pending:
                t.cancel()
            for t in done:
                t.exception()  # retrieved: a reset peer is normal
        finally:
            for w in (up_writer, down_writer):
                w.close()

    @staticmethod
    async def _pipe(reader: Any, writer: Any) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


# --- env and command expansion ------------------------------------------------------

class ConfigError(Exception):
    """A container cannot start yet (missing Secret/ConfigMap/volume): retried."""


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: $$ escapes, unknown references stay as they are."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text[i] == "$" and i + 1 < n:
            if text[i + 1] == "$":
                out.append("$")
                i += 2
                continue
            if text[i + 1] == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2:end]
                    out.append(env[name] if name in env else text[i:end + 1])
                    i = end + 1
                    continue
        out.append(text[i])
        i += 1
    return "".join(out)


def _field_value(pod: dict, path: str) -> str:
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"), "status.podIP": status.get("podIP"),
        "status.hostIPs": ",".join(i["ip"] for i in status.get("hostIPs") or []),
        "status.podIPs": ",".join(i["ip"] for i in status.get("podIPs") or []),
    }
    if path in simple:
        return simple[path] or ""
    for prefix, mapping in (("metadata.labels", meta.get("labels")), ("metadata.annotations", meta.get("annotations"))):
        if path == prefix:
            return "\n".join(f'{k}="{v}"' for k, v in sorted((mapping or {}).items()))
        if path.startswith(prefix + "['") and path.endswith("']"):
            return (mapping or {}).get(path[len(prefix) + 2:-2], "")
    raise ConfigError(f"unsupported fieldRef {path!r}")


def _service_env(services: list[dict], namespace: str, links: bool) -> dict[str, str]:
    """The docker-link style variables the kubelet injects for Services."""
    env: dict[str, str] = {}
    for svc in services:
        meta, spec = svc["metadata"], svc.get("spec") or {}
        is_master = (meta["namespace"], meta["name"]) == ("default", "kubernetes")
        cip = spec.get("clusterIP")
        if not cip or cip == "None" or not spec.get("ports"):
            continue
        if not is_master and (meta["namespace"] != namespace or not links):
            continue
        name = meta["name"].upper().replace("-", "_")
        first = spec["ports"][0]
        env[f"{name}_SERVICE_HOST"] = cip
        env[f"{name}_SERVICE_PORT"] = str(first["port"])
        env[f"{name}_PORT"] = f"{first.get('protocol', 'TCP').lower()}://{cip}:{first['port']}"
        for p in spec["ports"]:
            proto = p.get("protocol", "TCP")
            if p.get("name"):
                env[f"{name}_SERVICE_PORT_{p['name'].upper().replace('-', '_')}"] = str(p["port"])
            base = f"{name}_PORT_{p['port']}_{proto}"
            env[base] = f"{proto.lower()}://{cip}:{p['port']}"
            env[f"{base}_PROTO"] = proto.lower()
            env[f"{base}_PORT"] = str(p["port"])
            env[f"{base}_ADDR"] = cip
    return env


# --- one container ----------------------------------------------------------------

@dataclass
class Probe:
    kind: str  # readiness | liveness | startup
    spec: dict
    next_at: float
    future: Any = None
    successes: int = 0
    failures: int = 0


@dataclass
class Container:
    spec: dict
    init: bool = False
    proc: subprocess.Popen | None = None
    runs: int = 0
    state: str = "waiting"  # waiting | running | terminated
    reason: str = "ContainerCreating"
    message: str = ""
    started_at: float = 0.0
    terminated: dict | None = None  # the final state (no restart coming)
    last_state: dict | None = None  # the previous run's termination
    next_start: float = 0.0
    backoff: float = 0.0
    ready: bool = False
    started: bool = False  # the startup probe (if any) has passed
    probes: list[Probe] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    stop_deadline: float | None = None

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def container_id(self) -> str:
        return f"pid://{self.proc.pid}" if self.proc else ""

    def signal(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)


def _probe_port(pod: dict, port: Any) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for c in pod["spec"]["containers"]:
        for p in c.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
    raise ValueError(f"no container port named {port!r}")


def run_probe(spec: dict, pod: dict, pod_ip: str, pid: int, env: dict[str, str]) -> bool:
    """One probe attempt, as the kubelet runs it (from the node, to the pod IP)."""
    import http.client

    timeout = float(spec.get("timeoutSeconds", 1))
    try:
        if "httpGet" in spec:
            get = spec["httpGet"]
            host, port = get.get("host") or pod_ip, _probe_port(pod, get["port"])
            cls = http.client.HTTPSConnection if get.get("scheme") == "HTTPS" else http.client.HTTPConnection
            kwargs: dict[str, Any] = {"timeout": timeout}
            if cls is http.client.HTTPSConnection:
                import ssl

                kwargs["context"] = ssl._create_unverified_context()  # the kubelet does not verify either
            conn = cls(host, port, **kwargs)
            try:
                conn.request("GET", get.get("path") or "/",
                             headers={h["name"]: h["value"] for h in get.get("httpHeaders") or []})
                return 200 <= conn.getresponse().status < 400
            finally:
                conn.close()
        if "tcpSocket" in spec:
            tcp = spec["tcpSocket"]
            with socket.create_connection((tcp.get("host") or pod_ip, _probe_port(pod, tcp["port"])), timeout):
                return True
        if "exec" in spec:
            cmd = ["nsenter", "--target", str(pid), "--net", "--mount", "--uts", "--", *spec["exec"]["command"]]
            return subprocess.run(cmd, env=env, capture_output=True, timeout=max(timeout, 1)).returncode == 0
    except (OSError, ValueError, subprocess.TimeoutExpired, http.client.HTTPException):
        return False
    return True  # grpc probes: not implemented, treated as passing


# --- one pod ----------------------------------------------------------------------

TERMINAL = ("Succeeded", "Failed")


class PodRuntime:
    """The kubelet's pod worker, as a non-blocking state machine: sync() is called
    on every tick of the agent's loop with the latest Pod object."""

    def __init__(self, agent: NodeAgent, pod: dict):
        meta, spec = pod["metadata"], pod["spec"]
        self.agent, self.pod = agent, pod
        self.uid, self.ns, self.name = meta["uid"], meta["namespace"], meta["name"]
        self.dir = agent.data_dir / "pods" / f"{self.ns}_{self.name}_{self.uid[:8]}"
        self.host_network = bool(spec.get("hostNetwork"))
        self.hostname = (spec.get("hostname") or self.name)[:63]
        self.init_containers = [Container(c, init=True) for c in spec.get("initContainers") or []]
        self.containers = [Container(c) for c in spec["containers"]]
        self.sandbox: Sandbox | None = None
        self.ip: str | None = None
        self.volumes: dict[str, Path] | None = None
        self._volume_files: dict[str, dict] = {}
        self._volume_refresh_at = 0.0
        self._tokens: dict[tuple, str] = {}
        self.start_time = rfc3339()
        self.phase = "Pending"
        self._transitions: dict[str, tuple[str, str]] = {}
        self._written: dict | None = None
        self.terminating = False
        self._deleted_at = 0.0
        self.done = False  # terminal; the sandbox is gone
        # A pod that finished before this agent started is left as it is.
        if (pod.get("status") or {}).get("phase") in TERMINAL:
            self.done = True
            self.phase = pod["status"]["phase"]

    @property
    def restart_policy(self) -> str:
        return self.pod["spec"].get("restartPolicy", "Always")

    def all_containers(self) -> list[Container]:
        return self.init_containers + self.containers

    # - the loop -

    def sync(self, pod: dict) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self._sync_deleting()
            return
        if self.done:
            return
        if self.volumes is None and not self._create_sandbox():
            self._write_status()
            return
        self._refresh_volumes()
        if self._sync_init_containers():
            for c in self.containers:
                self._sync_container(c)
        self.phase = self._compute_phase()
        self._write_status()
        if self.phase in TERMINAL:
            log(f"pod {self.ns}/{self.name} {self.phase}")
            self.release()
            self.done = True

    def _sync_init_containers(self) -> bool:
        """Run the init containers one after another; True once all succeeded."""
        for c in self.init_containers:
            if c.state == "terminated":
                if c.terminated and c.terminated["exitCode"] == 0:
                    continue
                return False  # failed for good: the pod fails
            self._sync_container(c)
            if not (c.state == "terminated" and c.terminated and c.terminated["exitCode"] == 0):
                return False
        return True

    def _sync_container(self, c: Container) -> None:
        if c.proc is not None:
            if c.proc.poll() is None:
                self._sync_probes(c)
                return
            self._on_exit(c)
        if c.state != "terminated" and time.monotonic() >= c.next_start and not self.terminating:
            self._start(c)

    # - sandbox: network namespace, hosts file, volumes -

    def _create_sandbox(self) -> bool:
        try:
            if not self.host_network and self.sandbox is None:
                self.sandbox = self.agent.network.create_sandbox()
                self.ip = self.sandbox.ip
            elif self.host_network:
                self.ip = self.agent.network.gateway
            (self.dir / "exec").mkdir(parents=True, exist_ok=True)
            # No DNS server: Service names are in /etc/hosts, and a lookup of
            # anything else fails at once (nothing answers on port 53 there).
            (self.dir / "resolv.conf").write_text(
                f"nameserver {self.agent.network.services.ip}\n"
                f"search {self.ns}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n"
                "options ndots:5 timeout:1 attempts:1\n")
            self.agent.attach_pod(self)  # hosts file + Service listeners
            self.volumes = self._prepare_volumes()
            return True
        except ConfigError as e:
            self._waiting_all("ContainerCreating", str(e))
        except Exception as e:  # noqa: BLE001 - reported in the status, retried
            log(f"pod {self.ns}/{self.name}: sandbox: {e}")
            self._waiting_all("ContainerCreating", f"sandbox: {e}")
        return False

    def _waiting_all(self, reason: str, message: str) -> None:
        for c in self.all_containers():
            if c.state == "waiting":
                c.reason, c.message = reason, message

    @property
    def hosts_file(self) -> Path:
        return self.dir / "hosts"

    def write_hosts(self, services_text: str) -> None:
        fqdn = ""
        if self.pod["spec"].get("subdomain"):
            fqdn = f"{self.hostname}.{self.pod['spec']['subdomain']}.{self.ns}.svc.{CLUSTER_DOMAIN} "
        text = (
            "# Kubernetes-managed hosts file (kubenas node agent).\n"
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"{self.ip}\t{fqdn}{self.hostname}\n" + services_text
        )
        path = self.hosts_file
        if path.exists():
            if path.read_text() == text:
                return
            # In place: the containers have this very inode bind-mounted.
            with open(path, "r+") as f:
                f.write(text)
                f.truncate()
        else:
            path.write_text(text)

    def _prepare_volumes(self) -> dict[str, Path]:
        volumes: dict[str, Path] = {}
        for vol in self.pod["spec"].get("volumes") or []:
            name = vol["name"]
            path = self.dir / "volumes" / name
            if "emptyDir" in vol:
                path.mkdir(parents=True, exist_ok=True)
            elif "hostPath" in vol:
                path = Path(vol["hostPath"]["path"])
                kind = vol["hostPath"].get("type", "")
                if kind == "DirectoryOrCreate":
                    path.mkdir(parents=True, exist_ok=True)
                elif kind == "FileOrCreate" and not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.touch()
                elif not path.exists():
                    raise ConfigError(f"hostPath {path} does not exist")
            elif "persistentVolumeClaim" in vol:
                path = self.agent.claim_path(self.ns, vol["persistentVolumeClaim"]["claimName"])
            elif any(k in vol for k in ("configMap", "secret", "projected", "downwardAPI")):
                path.mkdir(parents=True, exist_ok=True)
                self._write_files(name, path, self._render(vol))
            else:
                raise ConfigError(f"volume {name!r}: type not supported by the node agent")
            volumes[name] = path
        self._volume_refresh_at = time.monotonic() + 5
        return volumes

    def _refresh_volumes(self) -> None:
        """Like the kubelet: updated ConfigMaps and Secrets reach mounted files."""
        if self.volumes is None or time.monotonic() < self._volume_refresh_at:
            return
        self._volume_refresh_at = time.monotonic() + 5
        for vol in self.pod["spec"].get("volumes") or []:
            if any(k in vol for k in ("configMap", "secret", "projected", "downwardAPI")):
                try:
                    self._write_files(vol["name"], self.volumes[vol["name"]], self._render(vol))
                except ConfigError:
                    pass  # deleted source: keep the last content, as the kubelet does

    def _render(self, vol: dict) -> dict[str, tuple[bytes, int]]:
        """A volume's files: relative path -> (content, mode)."""
        if "configMap" in vol:
            return self._key_files("ConfigMap", vol["configMap"], vol["configMap"].get("defaultMode", 0o644))
        if "secret" in vol:
            src = dict(vol["secret"], name=vol["secret"].get("secretName"))
            return self._key_files("Secret", src, vol["secret"].get("defaultMode", 0o644))
        if "downwardAPI" in vol:
            return self._downward_files(vol["downwardAPI"].get("items") or [],
                                        vol["downwardAPI"].get("defaultMode", 0o644))
        files: dict[str, tuple[bytes, int]] = {}
        mode = vol["projected"].get("defaultMode", 0o644)
        for src in vol["projected"].get("sources") or []:
            if "configMap" in src:
                files.update(self._key_files("ConfigMap", src["configMap"], mode))
            elif "secret" in src:
                files.update(self._key_files("Secret", src["secret"], mode))
            elif "downwardAPI" in src:
                files.update(self._downward_files(src["downwardAPI"].get("items") or [], mode))
            elif "serviceAccountToken" in src:
                sat = src["serviceAccountToken"]
                files[sat["path"]] = (self._token(sat).encode(), mode)
        return files

    def _key_files(self, kind: str, src: dict, default_mode: int) -> dict[str, tuple[bytes, int]]:
        data = self.agent.source_data(kind, self.ns, src.get("name", ""), bool(src.get("optional")))
        if data is None:
            return {}
        items = src.get("items")
        if not items:
            return {k: (v, default_mode) for k, v in data.items()}
        files = {}
        for item in items:
            if item["key"] not in data:
                if src.get("optional"):
                    continue
                raise ConfigError(f"{kind} {src.get('name')!r} has no key {item['key']!r}")
            files[item["path"]] = (data[item["key"]], item.get("mode", default_mode))
        return files

    def _downward_files(self, items: list[dict], default_mode: int) -> dict[str, tuple[bytes, int]]:
        files = {}
        for item in items:
            if "fieldRef" not in item:
                raise ConfigError("downwardAPI: only fieldRef is supported")
            files[item["path"]] = (_field_value(self._pod_with_ip(), item["fieldRef"]["fieldPath"]).encode(),
                                   item.get("mode", default_mode))
        return files

    def _token(self, sat: dict) -> str:
        """A bound service-account token (TokenRequest), kept for the pod's life."""
        key = (sat.get("audience"), sat.get("expirationSeconds", 3607))
        if key not in self._tokens:
            spec: dict[str, Any] = {
                "expirationSeconds": key[1],
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid},
            }
            if key[0]:
                spec["audiences"] = [key[0]]
            sa = self.pod["spec"].get("serviceAccountName") or "default"
            try:
                result = self.agent.kube.post(
                    f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token",
                    {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
                )
            except KubeError as e:
                raise ConfigError(f"token for service account {sa!r}: {e}") from e
            self._tokens[key] = result["status"]["token"]
        return self._tokens[key]

    def _write_files(self, name: str, root: Path, files: dict[str, tuple[bytes, int]]) -> None:
        if self._volume_files.get(name) == files:
            return
        for rel in set(self._volume_files.get(name, {})) - set(files):
            with contextlib.suppress(OSError):
                (root / rel).unlink()
        for rel, (content, mode) in files.items():
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_bytes(content)
            os.chmod(tmp, mode)
            os.replace(tmp, target)  # atomic for readers
        self._volume_files[name] = files

    def _pod_with_ip(self) -> dict:
        """The pod as the downward API sees it: with the IPs this agent assigned."""
        status = dict(self.pod.get("status") or {})
        if self.ip:
            status.update(podIP=self.ip, podIPs=[{"ip": self.ip}])
        status.update(hostIP=self.agent.network.gateway, hostIPs=[{"ip": self.agent.network.gateway}])
        return dict(self.pod, status=status)

    # - containers -

    def _mounts(self, c: Container) -> list[dict]:
        mounts = [] if self.host_network else [{"source": str(self.hosts_file), "target": "/etc/hosts"},
                                               {"source": str(self.dir / "resolv.conf"), "target": "/etc/resolv.conf"}]
        for vm in sorted(c.spec.get("volumeMounts") or [], key=lambda m: m["mountPath"].count("/")):
            if vm["name"] not in (self.volumes or {}):
                raise ConfigError(f"volumeMount {vm['name']!r} names no volume")
            source = self.volumes[vm["name"]]
            if vm.get("subPath"):
                source = source / vm["subPath"]
                if not source.exists():
                    source.mkdir(parents=True)
            target = os.path.normpath(vm["mountPath"])
            # A mount point inside an earlier mount (mounts go parents first) is
            # made in that volume, where the process will look for it.
            outer = next((m for m in reversed(mounts) if target.startswith(m["target"].rstrip("/") + "/")), None)
            if outer is None:
                self.agent.ensure_mount_point(target, source.is_dir())
            else:
                point = Path(outer["source"]) / os.path.relpath(target, outer["target"])
                if source.is_dir():
                    point.mkdir(parents=True, exist_ok=True)
                elif not point.exists():
                    point.parent.mkdir(parents=True, exist_ok=True)
                    point.touch()
            mounts.append({"source": str(source), "target": target, "readOnly": bool(vm.get("readOnly"))})
        return mounts

    def _start(self, c: Container) -> None:
        try:
            c.env = self.agent.container_env(self, c.spec)
            argv = [expand(a, c.env) for a in (c.spec.get("command") or []) + (c.spec.get("args") or [])]
            if not argv:
                raise ConfigError("no command: the node agent cannot run an image's entrypoint")
            mounts = self._mounts(c)
        except ConfigError as e:
            c.reason, c.message = "CreateContainerConfigError", str(e)
            c.next_start = time.monotonic() + 2
            return
        exec_spec = self.dir / "exec" / f"{c.name}.json"
        exec_spec.write_text(json.dumps({
            "netns": self.sandbox.path if self.sandbox else None,
            "hostname": self.hostname,
            "mounts": mounts,
            "workingDir": c.spec.get("workingDir") or str(self.agent.workdir),
            "explicitWorkingDir": bool(c.spec.get("workingDir")),
        }))
        log_path = self.agent.log_path(self.ns, self.name, c.name)
        with open(log_path, "ab") as out:
            c.proc = subprocess.Popen(
                [self.agent.python, "-I", "-S", AGENT_FILE, "--exec", str(exec_spec), "--", *argv],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=c.env,
                cwd="/", start_new_session=True,  # its own process group: stopped as a whole
            )
        c.runs += 1
        c.state, c.reason, c.message = "running", "", ""
        c.started_at = time.time()
        c.ready = False
        c.started = "startupProbe" not in c.spec
        now = time.monotonic()
        c.probes = [
            Probe(kind, c.spec[f"{kind}Probe"], now + c.spec[f"{kind}Probe"].get("initialDelaySeconds", 0))
            for kind in ("startup", "readiness", "liveness") if f"{kind}Probe" in c.spec
        ]
        log(f"started {self.ns}/{self.name}/{c.name} pid {c.proc.pid} (run {c.runs}): {argv[0]}")

    def _on_exit(self, c: Container) -> None:
        code = c.proc.returncode
        exit_code = code if code >= 0 else 128 - code
        term = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": rfc3339(c.started_at),
            "finishedAt": rfc3339(),
            "containerID": c.container_id,
        }
        if code < 0:
            term["signal"] = -code
        c.signal(signal.SIGKILL)  # whatever is left of its process group
        log(f"{self.ns}/{self.name}/{c.name} exited with {exit_code}")
        c.proc, c.ready, c.probes, c.stop_deadline = None, False, [], None
        if c.init:
            restart = exit_code != 0 and self.restart_policy != "Never"
        else:
            restart = self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and exit_code != 0)
        if restart and not self.terminating:
            ran = time.time() - c.started_at
            base, cap = self.agent.backoff
            c.backoff = base if ran > 60 or c.backoff == 0 else min(c.backoff * 2, cap)
            c.next_start = time.monotonic() + c.backoff
            c.state, c.reason, c.message = "waiting", "CrashLoopBackOff", f"back-off {c.backoff:g}s restarting failed container"
            c.last_state = term
        else:
            c.state, c.terminated = "terminated", term

    def _sync_probes(self, c: Container) -> None:
        if not c.probes:
            c.ready = c.started
            return
        now = time.monotonic()
        for p in c.probes:
            if (p.kind == "startup") == c.started:
                continue  # the startup probe runs until it passes, the others only after it
            if p.future is not None and p.future.done():
                ok = p.future.exception() is None and bool(p.future.result())
                p.future = None
                p.successes, p.failures = (p.successes + 1, 0) if ok else (0, p.failures + 1)
                success_threshold = p.spec.get("successThreshold", 1)
                failure_threshold = p.spec.get("failureThreshold", 3)
                if p.kind == "readiness":
                    if p.successes >= success_threshold:
                        c.ready = True
                    elif p.failures >= failure_threshold:
                        c.ready = False
                elif p.kind == "startup" and p.successes >= 1:
                    c.started = True
                    c.ready = not any(q.kind == "readiness" for q in c.probes)
                elif p.failures >= failure_threshold:  # liveness or startup failed: restart it
                    log(f"{self.ns}/{self.name}/{c.name}: {p.kind} probe failed, killing it")
                    c.signal(signal.SIGKILL)
            if p.future is None and now >= p.next_at:
                p.next_at = now + p.spec.get("periodSeconds", 10)
                p.future = self.agent.probes.submit(run_probe, p.spec, self.pod, self.ip or "", c.proc.pid, c.env)
        if not any(p.kind == "readiness" for p in c.probes):
            c.ready = c.started

    # - phase and status -

    def _compute_phase(self) -> str:
        """The kubelet's getPhase, for the states this agent has."""
        for c in self.init_containers:
            if c.state == "terminated" and c.terminated and c.terminated["exitCode"] != 0:
                return "Failed"
            if not (c.state == "terminated" and c.terminated):
                return "Pending"
        waiting = running = failed = 0
        for c in self.containers:
            if c.state == "running" or (c.state == "waiting" and c.last_state):
                running += 1  # restarting counts as running
            elif c.state == "waiting":
                waiting += 1
            elif c.terminated and c.terminated["exitCode"] != 0:
                failed += 1
        if waiting:
            return "Pending"
        if running:
            return "Running"
        return "Failed" if failed else "Succeeded"

    def _container_status(self, c: Container) -> dict:
        if c.state == "running":
            state: dict = {"running": {"startedAt": rfc3339(c.started_at)}}
        elif c.state == "terminated" and c.terminated:
            state = {"terminated": c.terminated}
        else:
            state = {"waiting": {"reason": c.reason, **({"message": c.message} if c.message else {})}}
        status = {
            "name": c.name,
            "image": c.spec.get("image", ""),
            "imageID": "",
            "ready": bool(c.ready and c.state == "running"),
            "started": c.state == "running" and c.started,
            "restartCount": max(c.runs - 1, 0),
            "state": state,
            "lastState": {"terminated": c.last_state} if c.last_state else {},
        }
        if c.proc is not None:
            status["containerID"] = c.container_id
        elif c.terminated:
            status["containerID"] = c.terminated["containerID"]
        return status

    def _condition(self, kind: str, ok: bool, reason: str = "") -> dict:
        value = "True" if ok else "False"
        previous = self._transitions.get(kind)
        if previous is None or previous[0] != value:
            self._transitions[kind] = (value, rfc3339())
        cond = {"type": kind, "status": value, "lastProbeTime": None,
                "lastTransitionTime": self._transitions[kind][1]}
        if not ok and reason:
            cond["reason"] = reason
        return cond

    def _status(self) -> dict:
        initialized = all(c.state == "terminated" and c.terminated and c.terminated["exitCode"] == 0
                          for c in self.init_containers)
        ready = self.phase == "Running" and all(c.ready and c.state == "running" for c in self.containers)
        existing = {c["type"]: c.get("status") for c in (self.pod.get("status") or {}).get("conditions") or []}
        gates = all(existing.get(g["conditionType"]) == "True" for g in self.pod["spec"].get("readinessGates") or [])
        not_ready = "PodCompleted" if self.phase in TERMINAL else "ContainersNotReady"
        status: dict[str, Any] = {
            "phase": self.phase,
            "hostIP": self.agent.network.gateway,
            "hostIPs": [{"ip": self.agent.network.gateway}],
            "startTime": self.start_time,
            "conditions": [
                self._condition("PodReadyToStartContainers", self.volumes is not None and self.phase not in TERMINAL),
                self._condition("Initialized", initialized, "ContainersNotInitialized"),
                self._condition("ContainersReady", ready, not_ready),
                self._condition("Ready", ready and gates, not_ready),
            ],
            "containerStatuses": [self._container_status(c) for c in self.containers],
        }
        if self.init_containers:
            status["initContainerStatuses"] = [self._container_status(c) for c in self.init_containers]
        if self.ip:
            status["podIP"], status["podIPs"] = self.ip, [{"ip": self.ip}]
        return status

    def _write_status(self) -> None:
        status = self._status()
        if status == self._written:
            return
        try:
            self.agent.kube.patch(f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status",
                                  {"metadata": {"uid": self.uid}, "status": status})
            self._written = status
        except KubeError as e:
            if e.status not in (404, 409):
                log(f"status of {self.ns}/{self.name}: {e}")
        except Exception as e:  # noqa: BLE001 - the API is unreachable: written on the next tick
            log(f"status of {self.ns}/{self.name}: {type(e).__name__}: {e}")

    # - stopping -

    def _sync_deleting(self) -> None:
        if not self.terminating:
            self.terminating = True
            spec_grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
            grace = self.pod["metadata"].get("deletionGracePeriodSeconds", spec_grace)
            grace = min(grace if grace is not None else 30, self.agent.max_grace)
            log(f"deleting {self.ns}/{self.name} (grace {grace}s)")
            self.stop_containers(grace)
        if not self.poll_stopped():
            return
        if not self.done:
            # Like the kubelet: a deleted pod ends in a terminal phase first.
            for c in self.all_containers():
                if c.state != "terminated":
                    c.state = "terminated"
                    c.terminated = c.last_state or {
                        "exitCode": 137, "reason": "ContainerStatusUnknown", "startedAt": rfc3339(c.started_at),
                        "finishedAt": rfc3339(), "containerID": ""}
            if self.phase not in TERMINAL:
                self.phase = self._compute_phase()  # all terminated: Succeeded or Failed
            self._write_status()
            self.release()
            self.done = True
        if time.monotonic() - self._deleted_at > 5:
            self._deleted_at = time.monotonic()
            try:
                self.agent.kube.delete(f"/api/v1/namespaces/{self.ns}/pods/{self.name}",
                                       {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}})
            except KubeError as e:
                if e.status not in (404, 409):
                    log(f"delete {self.ns}/{self.name}: {e}")
            except Exception as e:  # noqa: BLE001 - retried in 5 s
                log(f"delete {self.ns}/{self.name}: {type(e).__name__}: {e}")

    def stop_containers(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        for c in self.all_containers():
            if c.proc is not None and c.proc.poll() is None:
                c.signal(signal.SIGTERM)
                c.stop_deadline = deadline

    def poll_stopped(self) -> bool:
        """Reap stopped containers, SIGKILL those past their deadline; True when none is left."""
        alive = False
        for c in self.all_containers():
            if c.proc is None:
                continue
            if c.proc.poll() is None:
                if c.stop_deadline is not None and time.monotonic() >= c.stop_deadline:
                    c.signal(signal.SIGKILL)
                alive = True
            else:
                self._on_exit(c)
        return not alive

    def kill_now(self) -> None:
        for c in self.all_containers():
            if c.proc is not None:
                c.signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    c.proc.wait(timeout=5)
                c.proc = None

    def release(self) -> None:
        """Free the network namespace (and its IP); volumes stay until the pod is gone."""
        self.kill_now()
        if self.sandbox is not None:
            self.agent.network.destroy_sandbox(self.sandbox)
            self.sandbox = None


# --- the node -----------------------------------------------------------------------

def _meminfo_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return 8 * 1024 * 1024


class NodeAgent:
    def __init__(self, kubeconfig: str, data_dir: Path, node_name: str = "kubenas-node-0", gpus: int = 0,
                 gpu_resource: str = "nvidia.com/gpu", cpu: str = "16", memory: str | None = None,
                 max_grace: float = 10, etc_hosts: bool = False, workdir: str | None = None,
                 backoff: tuple[float, float] = (1.0, 30.0), exit_with_parent: bool = False):
        self.kubeconfig = kubeconfig
        self.data_dir = Path(data_dir).resolve()
        self.node_name, self.gpus, self.gpu_resource = node_name, gpus, gpu_resource
        self.cpu, self.memory = cpu, memory or f"{_meminfo_kib()}Ki"
        self.max_grace, self.etc_hosts, self.backoff = max_grace, etc_hosts, backoff
        self.workdir = Path(workdir or os.getcwd()).resolve()
        self.python = sys.executable  # bin/python of the virtualenv, not resolved: its bin/ goes first on PATH
        self.exit_with_parent = os.getppid() if exit_with_parent else None
        self.runtimes: dict[str, PodRuntime] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._created_paths: list[str] = []
        self._provisioned: set[str] = set()
        self._table_version: tuple = ()
        self.records: list[tuple[str, str, str]] = []  # (ip, namespace, name) for /etc/hosts
        self._etc_hosts_text = ""

    # - lifecycle -

    def run(self) -> int:
        from concurrent.futures import ThreadPoolExecutor

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.network = Network()
        self._save_state()
        try:
            self.network.setup()
            self.kube = Kube(self.kubeconfig)
            host, port = self.kube.server.split("://", 1)[1].rsplit(":", 1)
            self.api_endpoint = (host.strip("[]"), int(port))
            self.proxy = ServiceProxy(self.network.services)
            self.probes = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
            self._register_node()
            threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()
            self.pods = Informer(self.kube, "/api/v1/pods", self.wake, fieldSelector=f"spec.nodeName={self.node_name}")
            self.services = Informer(self.kube, "/api/v1/services", self.wake)
            self.slices = Informer(self.kube, "/apis/discovery.k8s.io/v1/endpointslices", self.wake)
            self.claims = Informer(self.kube, "/api/v1/persistentvolumeclaims", self.wake)
            for informer in (self.pods, self.services, self.slices, self.claims):
                if not informer.synced.wait(60):
                    raise RuntimeError(f"could not list {informer.path}")
            self._wait_schedulable()
            print(f"READY {self.node_name} {self.network.cidr}", flush=True)
            log(f"node {self.node_name} ready, pods in {self.network.cidr}")
            while not self._stop.is_set():
                self._sync()
                if self.exit_with_parent and os.getppid() != self.exit_with_parent:
                    log("parent exited; stopping")
                    break
                self._wake.wait(0.5)
                self._wake.clear()
            return 0
        finally:
            self._shutdown()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _save_state(self) -> None:
        state = {"subnet": self.network.index, "pid": os.getpid(), "created_paths": self._created_paths}
        path = self.data_dir / "agent.json"
        path.with_suffix(".tmp").write_text(json.dumps(state))
        os.replace(path.with_suffix(".tmp"), path)

    def _shutdown(self) -> None:
        log("shutting down")
        runtimes = list(self.runtimes.values())
        for rt in runtimes:
            rt.stop_containers(min(self.max_grace, 5))
        deadline = time.monotonic() + min(self.max_grace, 5) + 2
        while time.monotonic() < deadline and not all(rt.poll_stopped() for rt in runtimes):
            time.sleep(0.1)
        for rt in runtimes:
            with contextlib.suppress(Exception):
                rt.release()
        for name in ("pods", "services", "slices", "claims"):
            if hasattr(self, name):
                getattr(self, name).stop()
        if hasattr(self, "probes"):
            self.probes.shutdown(wait=False, cancel_futures=True)
        if self.etc_hosts:
            update_etc_hosts(self.network.index, "")
        remove_created_paths(self._created_paths)
        self.network.teardown()

    # - node registration and heartbeats -

    def _node_status(self) -> dict:
        now = rfc3339()
        resources = {"cpu": self.cpu, "memory": self.memory, "pods": "110", "ephemeral-storage": "100Gi",
                     self.gpu_resource: str(self.gpus)}
        started = getattr(self, "_registered_at", now)

        def cond(kind: str, status: str, reason: str, message: str) -> dict:
            return {"type": kind, "status": status, "reason": reason, "message": message,
                    "lastHeartbeatTime": now, "lastTransitionTime": started}

        uname = os.uname()
        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "no PID pressure"),
                cond("Ready", "True", "KubeletReady", "kubenas node agent is posting ready status"),
            ],
            "addresses": [{"type": "InternalIP", "address": self.network.gateway},
                          {"type": "Hostname", "address": self.node_name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": uname.release,
                "osImage": "kubenas node agent", "containerRuntimeVersion": "kubenas-node-agent://0.1",
                "kubeletVersion": "v1.34.4", "kubeProxyVersion": "", "operatingSystem": "linux",
                "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(uname.machine, uname.machine),
            },
        }

    def _register_node(self) -> None:
        self._registered_at = rfc3339()
        labels = {"kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux",
                  "kubernetes.io/arch": self._node_status()["nodeInfo"]["architecture"]}
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node_name, "labels": labels},
                "spec": {"podCIDR": self.network.cidr, "podCIDRs": [self.network.cidr]},
                "status": self._node_status()}  # Ready from the start: no not-ready taint to wait out
        try:
            node = self.kube.post("/api/v1/nodes", body)
        except KubeError as e:
            if e.status != 409:
                raise
            node = self.kube.patch(f"/api/v1/nodes/{self.node_name}", {"metadata": {"labels": labels}})
        self.node_uid = node["metadata"]["uid"]
        self.kube.patch(f"/api/v1/nodes/{self.node_name}/status", {"status": self._node_status()})
        self._renew_lease()

    def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
        spec = {"holderIdentity": self.node_name, "leaseDurationSeconds": 40, "renewTime": micro_time()}
        try:
            self.kube.patch(path, {"spec": spec}, strategic=False)
        except KubeError as e:
            if e.status != 404:
                raise
            self.kube.post("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.node_name, "namespace": "kube-node-lease", "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": self.node_uid}]},
                "spec": spec,
            })

    def _heartbeat(self) -> None:
        last_status = time.monotonic()
        while not self._stop.wait(10):
            try:
                self._renew_lease()
                if time.monotonic() - last_status >= 30:
                    self.kube.patch(f"/api/v1/nodes/{self.node_name}/status", {"status": self._node_status()})
                    last_status = time.monotonic()
            except Exception as e:  # noqa: BLE001 - try again next time
                log(f"heartbeat: {e}")

    def _wait_schedulable(self, timeout: float = 60) -> None:
        """The node-lifecycle controller taints a new node until it has seen it Ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            node = self.kube.get(f"/api/v1/nodes/{self.node_name}")
            taints = [t for t in node["spec"].get("taints") or [] if t["effect"] in ("NoSchedule", "NoExecute")]
            if not taints:
                return
            time.sleep(0.5)
        log(f"node {self.node_name} still tainted after {timeout:.0f}s")

    # - the sync loop -

    def _sync(self) -> None:
        self._sync_services()
        self._provision_claims()
        pods = self.pods.snapshot()
        seen = set()
        for pod in pods.values():
            uid = pod["metadata"]["uid"]
            seen.add(uid)
            try:
                rt = self.runtimes.get(uid)
                if rt is None:
                    rt = self.runtimes[uid] = PodRuntime(self, pod)
                rt.sync(pod)
            except Exception:  # noqa: BLE001 - one broken pod never stops the agent
                log(f"pod {pod['metadata']['namespace']}/{pod['metadata']['name']}: {traceback.format_exc()}")
        for uid in set(self.runtimes) - seen:  # gone from the API (e.g. force-deleted)
            rt = self.runtimes.pop(uid)
            with contextlib.suppress(Exception):
                rt.release()
            shutil.rmtree(rt.dir, ignore_errors=True)

    def log_path(self, namespace: str, pod: str, container: str) -> Path:
        return self.data_dir / "logs" / f"{namespace}_{pod}_{container}.log"

    # - Services -

    def _sync_services(self) -> None:
        version = (self.services.version, self.slices.version)
        if version == self._table_version:
            return
        self._table_version = version
        services = self.services.snapshot().values()
        endpoints: dict[tuple[str, str], list[tuple[str, dict, str | None]]] = {}
        for s in self.slices.snapshot().values():
            svc = (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name")
            if not svc:
                continue
            ports = {p.get("name") or "": p["port"] for p in s.get("ports") or [] if p.get("port")}
            for ep in s.get("endpoints") or []:
                if (ep.get("conditions") or {}).get("ready") is False:
                    continue
                for addr in ep.get("addresses") or []:
                    endpoints.setdefault((s["metadata"]["namespace"], svc), []).append((addr, ports, ep.get("hostname")))
        routes: dict[tuple[str, int], list[tuple[str, int]]] = {}
        records: list[tuple[str, str, str]] = []
        for svc in services:
            ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
            spec = svc.get("spec") or {}
            if spec.get("type") == "ExternalName":
                continue
            eps = endpoints.get((ns, name), [])
            cip = spec.get("clusterIP")
            if cip and cip != "None":
                for p in spec.get("ports") or []:
                    if p.get("protocol", "TCP") != "TCP":
                        continue
                    if (ns, name) == ("default", "kubernetes"):
                        routes[(cip, p["port"])] = [self.api_endpoint]
                    else:
                        pname = p.get("name") or ""
                        routes[(cip, p["port"])] = [(a, ports[pname]) for a, ports, _ in eps if pname in ports]
                records.append((cip, ns, name))
            else:  # headless: the names resolve to the ready endpoints themselves
                for addr, _, hostname in eps:
                    records.append((addr, ns, name))
                    if hostname:
                        records.append((addr, ns, f"{hostname}.{name}"))
        self.records = records
        try:
            self.proxy.set_routes(routes)
        except Exception as e:  # noqa: BLE001 - retried on the next change
            log(f"service proxy: {e}")
            self._table_version = ()
        for rt in self.runtimes.values():
            if rt.volumes is not None and not rt.done:
                with contextlib.suppress(Exception):
                    self.attach_pod(rt)
        if self.etc_hosts:
            self._write_etc_hosts(endpoints)

    def hosts_text(self, namespace: str) -> str:
        lines = []
        for ip, ns, name in self.records:
            names = [f"{name}.{ns}.svc.{CLUSTER_DOMAIN}", f"{name}.{ns}.svc", f"{name}.{ns}"]
            if ns == namespace:
                names.append(name)
            lines.append(f"{ip}\t{' '.join(names)}\n")
        return "".join(lines)

    def attach_pod(self, rt: PodRuntime) -> None:
        """Write a pod's hosts file (again after Service changes)."""
        if not rt.host_network:
            rt.write_hosts(self.hosts_text(rt.ns))

    def _write_etc_hosts(self, endpoints: dict) -> None:
        """Optional: the node's own /etc/hosts maps Service names to a ready pod IP
        (no ClusterIPs on the node), so tests can use the names too."""
        lines = []
        for svc in self.services.snapshot().values():
            ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
            eps = endpoints.get((ns, name))
            if eps:
                lines.append(f"{eps[0][0]}\t{name}.{ns}.svc.{CLUSTER_DOMAIN} {name}.{ns}.svc {name}.{ns}\n")
        text = "".join(sorted(lines))
        if text != self._etc_hosts_text:
            update_etc_hosts(self.network.index, text)
            self._etc_hosts_text = text

    # - env, config sources, volumes -

    def source_data(self, kind: str, namespace: str, name: str, optional: bool) -> dict[str, bytes] | None:
        plural = "configmaps" if kind == "ConfigMap" else "secrets"
        try:
            obj = self.kube.get(f"/api/v1/namespaces/{namespace}/{plural}/{name}")
        except KubeError as e:
            if e.status == 404 and optional:
                return None
            raise ConfigError(f"{kind} {namespace}/{name}: {'not found' if e.status == 404 else e}") from e
        if kind == "Secret":
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return data

    def container_env(self, rt: PodRuntime, spec: dict) -> dict[str, str]:
        pod = rt._pod_with_ip()
        env = {
            "PATH": f"{Path(self.python).parent}:{DEFAULT_PATH}",
            "HOME": "/root",
            "HOSTNAME": rt.hostname,
            "LANG": "C.UTF-8",
        }
        links = pod["spec"].get("enableServiceLinks", True)
        env.update(_service_env(list(self.services.snapshot().values()), rt.ns, links))
        for src in spec.get("envFrom") or []:
            ref = src.get("configMapRef") or src.get("secretRef") or {}
            kind = "ConfigMap" if "configMapRef" in src else "Secret"
            data = self.source_data(kind, rt.ns, ref.get("name", ""), bool(ref.get("optional")))
            for k, v in (data or {}).items():
                if "=" not in k:
                    env[src.get("prefix", "") + k] = v.decode(errors="replace")
        for e in spec.get("env") or []:
            if "valueFrom" not in e:
                env[e["name"]] = expand(e.get("value", ""), env)
                continue
            vf = e["valueFrom"]
            if "fieldRef" in vf:
                env[e["name"]] = _field_value(pod, vf["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
                kind = "Secret" if "secretKeyRef" in vf else "ConfigMap"
                ref = vf.get("secretKeyRef") or vf.get("configMapKeyRef")
                data = self.source_data(kind, rt.ns, ref["name"], bool(ref.get("optional")))
                if data is None or ref["key"] not in data:
                    if ref.get("optional"):
                        continue
                    raise ConfigError(f"{kind} {rt.ns}/{ref['name']} has no key {ref['key']!r}")
                env[e["name"]] = data[ref["key"]].decode(errors="replace")
            else:
                raise ConfigError(f"env {e['name']}: only fieldRef, secretKeyRef and configMapKeyRef are supported")
        return env

    def ensure_mount_point(self, target: str, is_dir: bool) -> None:
        """Bind mounts need something to mount on. A missing mount point is
        created on the host (mkdir is not namespaced) and removed at shutdown."""
        path = Path(target)
        if path.exists() or path.is_symlink():
            return
        top = path
        while not top.parent.exists():
            top = top.parent
        if is_dir:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        self._created_paths.append(str(top))
        self._save_state()

    def claim_path(self, namespace: str, claim: str) -> Path:
        try:
            pvc = self.kube.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}")
        except KubeError as e:
            raise ConfigError(f"PersistentVolumeClaim {namespace}/{claim}: {e}") from e
        volume = (pvc.get("spec") or {}).get("volumeName")
        if not volume or (pvc.get("status") or {}).get("phase") != "Bound":
            raise ConfigError(f"PersistentVolumeClaim {namespace}/{claim} is not bound yet")
        pv = self.kube.get(f"/api/v1/persistentvolumes/{volume}")
        source = pv["spec"].get("hostPath") or pv["spec"].get("local")
        path = Path(source["path"]) if source else self.data_dir / "volumes" / f"{namespace}_{claim}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _provision_claims(self) -> None:
        """A hostPath PersistentVolume for each pending claim; the real PV controller binds them."""
        for pvc in self.claims.snapshot().values():
            meta, spec = pvc["metadata"], pvc.get("spec") or {}
            if spec.get("volumeName") or meta["uid"] in self._provisioned or meta.get("deletionTimestamp"):
                continue
            path = self.data_dir / "volumes" / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
            path.mkdir(parents=True, exist_ok=True)
            pv = {
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": f"pvc-{meta['uid']}",
                             "labels": {"kubenas.io/node-agent": self.node_name}},
                "spec": {
                    "capacity": {"storage": ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")},
                    "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": spec.get("storageClassName") or "",
                    "volumeMode": spec.get("volumeMode") or "Filesystem",
                    "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                    "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                 "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
                },
            }
            try:
                self.kube.post("/api/v1/persistentvolumes", pv)
                log(f"provisioned {pv['metadata']['name']} for {meta['namespace']}/{meta['name']} at {path}")
            except KubeError as e:
                if e.status != 409:
                    log(f"provision {meta['namespace']}/{meta['name']}: {e}")
                    continue
            self._provisioned.add(meta["uid"])


# --- host files: /etc/hosts block, mount points -----------------------------------------

def update_etc_hosts(index: int, text: str) -> None:
    """Replace this agent's marked block in /etc/hosts (in place, under a lock)."""
    begin, end = f"# BEGIN kubenas-node-agent {index}\n", f"# END kubenas-node-agent {index}\n"
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK_DIR / "etc-hosts.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = ETC_HOSTS.read_text()
        kept, inside = [], False
        for line in current.splitlines(keepends=True):
            if line == begin:
                inside = True
            elif line == end:
                inside = False
            elif not inside:
                kept.append(line)
        new = "".join(kept)
        if text:
            new = new + ("" if new.endswith("\n") or not new else "\n") + begin + text + end
        if new != current:
            with open(ETC_HOSTS, "r+") as f:  # in place: /etc/hosts may itself be a bind mount
                f.write(new)
                f.truncate()


def _mount_points() -> set[str]:
    """Every mount point of every process's mount namespace."""
    points = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                for line in (entry / "mountinfo").read_text().splitlines():
                    points.add(line.split()[4])
    return points


def remove_created_paths(paths: list[str]) -> None:
    """Remove mount points this agent created on the host, if empty and unused
    (another agent's pod may have mounted on the same path meanwhile)."""
    if not paths:
        return
    mounted = _mount_points()
    for top in sorted(set(paths), key=len, reverse=True):
        if any(m == top or m.startswith(top.rstrip("/") + "/") for m in mounted):
            continue
        root = Path(top)
        if root.is_file() and root.stat().st_size == 0:
            root.unlink()
            continue
        for dirpath, dirnames, filenames in os.walk(root, topdown=False):
            with contextlib.suppress(OSError):
                for f in filenames:
                    if (Path(dirpath) / f).stat().st_size == 0:
                        (Path(dirpath) / f).unlink()
                os.rmdir(dirpath)


def cleanup_agent(data_dir: Path) -> None:
    """Undo what a killed agent left: processes, namespaces, bridge, /etc/hosts block."""
    state = json.loads((Path(data_dir) / "agent.json").read_text())
    fd = lock_subnet(state["subnet"], blocking=True)
    try:
        cleanup_subnet(state["subnet"])
        update_etc_hosts(state["subnet"], "")
        remove_created_paths(state.get("created_paths") or [])
    finally:
        os.close(fd)


# --- for tests: run the agent as a subprocess ---------------------------------------

@dataclass
class RunningNodeAgent:
    node_name: str
    pod_cidr: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen

    def container_log(self, namespace: str, pod: str, container: str) -> str:
        path = self.data_dir / "logs" / f"{namespace}_{pod}_{container}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def diagnostics(self, lines: int = 20) -> str:
        """The agent's log and every container log's tail, for failure messages."""
        parts = [f"--- node agent ({self.log_path}):\n{self.log_tail(lines * 2)}"]
        for path in sorted((self.data_dir / "logs").glob("*.log")):
            tail = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            parts.append(f"--- {path.name}:\n{tail}")
        return "\n".join(parts)


@contextlib.contextmanager
def start_node_agent(
    cluster: Any,
    data_dir: os.PathLike | str,
    gpus: int = 0,
    *,
    node_name: str = "kubenas-node-0",
    gpu_resource: str = "nvidia.com/gpu",
    cpu: str = "16",
    memory: str | None = None,
    etc_hosts: bool = False,
    max_grace: float = 10,
    timeout: float = 120,
) -> Iterator[RunningNodeAgent]:
    """Run the node agent against ``cluster`` (anything with a ``kubeconfig``)
    until the block exits; it stops every pod process and removes its network
    namespaces, bridge and host entries on the way out."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "agent.log"
    repo_root = Path(AGENT_FILE).parents[2]
    cmd = [sys.executable, "-m", "tests.support.node_agent", "--kubeconfig", str(cluster.kubeconfig),
           "--data-dir", str(data_dir), "--node-name", node_name, "--gpus", str(gpus),
           "--gpu-resource", gpu_resource, "--cpu", cpu, "--max-grace", str(max_grace),
           "--exit-with-parent"]
    if memory:
        cmd += ["--memory", memory]
    if etc_hosts:
        cmd.append("--etc-hosts")
    with open(log_path, "ab") as agent_log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=agent_log,
                                text=True, cwd=repo_root, start_new_session=True)
    try:
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, name="node-agent-stdout", daemon=True).start()
        deadline = time.monotonic() + timeout
        ready: list[str] | None = None
        while ready is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"node agent not READY within {timeout:.0f}s; log {log_path}:\n"
                                   + "\n".join(log_path.read_text(errors="replace").splitlines()[-40:]))
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                proc.wait(timeout=10)
                raise RuntimeError(f"node agent exited with {proc.returncode} before READY; log {log_path}:\n"
                                   + "\n".join(log_path.read_text(errors="replace").splitlines()[-40:]))
            if line.startswith("READY "):
                ready = line.split()
        yield RunningNodeAgent(node_name=ready[1], pod_cidr=ready[2], data_dir=data_dir, log_path=log_path,
                               process=proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=max_grace + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc.returncode != 0 and (data_dir / "agent.json").exists():
            subprocess.run([sys.executable, "-m", "tests.support.node_agent", "--cleanup", "--data-dir",
                            str(data_dir)], cwd=repo_root, timeout=60, check=False)


# --- command line -------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--exec"]:
        exec_container(argv[1], argv[3:])  # --exec SPEC -- COMMAND...; does not return
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.support.node_agent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--node-name", default="kubenas-node-0")
    parser.add_argument("--gpus", type=int, default=0, help="how many GPUs the node advertises")
    parser.add_argument("--gpu-resource", default="nvidia.com/gpu")
    parser.add_argument("--cpu", default="16", help="CPU capacity advertised (not enforced)")
    parser.add_argument("--memory", help="memory capacity advertised (default: the host's)")
    parser.add_argument("--max-grace", type=float, default=10, help="cap on terminationGracePeriodSeconds")
    parser.add_argument("--etc-hosts", action="store_true",
                        help="also map Service names to a ready pod IP in the host's /etc/hosts")
    parser.add_argument("--exit-with-parent", action="store_true")
    parser.add_argument("--cleanup", action="store_true", help="remove what a killed agent on --data-dir left")
    args = parser.parse_args(argv)
    if args.cleanup:
        cleanup_agent(Path(args.data_dir))
        return 0
    if not args.kubeconfig:
        parser.error("--kubeconfig is required")
    if os.geteuid() != 0:
        parser.error("the node agent needs root (network and mount namespaces)")
    agent = NodeAgent(args.kubeconfig, Path(args.data_dir), node_name=args.node_name, gpus=args.gpus,
                      gpu_resource=args.gpu_resource, cpu=args.cpu, memory=args.memory,
                      max_grace=args.max_grace, etc_hosts=args.etc_hosts, exit_with_parent=args.exit_with_parent)
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
