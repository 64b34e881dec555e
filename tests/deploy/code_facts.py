"""What the code says, for the deployment checks: the programs the build
installs and the environment variables each one reads."""
import glob, os, re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def options_of(sources):
    env = set()
    for src in sources:
        text = open(os.path.join(ROOT, src)).read()
        env |= set(re.findall(r'\{"[a-z0-9-]+",\s*"([A-Z0-9_]+)",\s*MH_CFG_', text))
        env |= set(re.findall(r'"([A-Z0-9_]+)",\s*\\?\s*\n?\s*MH_CFG_STR', text))
    return env


COMMON = set(re.findall(r'"(MH_[A-Z_]+)"', open(os.path.join(ROOT, "libcommon/mh_service.h")).read()))
PROGRAMS = {
    "motehub-ingest": ["services/ingest/in_service.c"],
    "motehub-twin": ["services/twin/tw_service.c"],
    "motehub-ota": ["services/ota/ota_service.c"],
    "motehub-gateway": ["services/gateway/gw_service.c"],
    "motehub-fleet-stats": ["services/fleet-stats/fs_service.c"],
    "motehub-coldstore": ["tools/coldstore/coldstore.c"],
    "motesim": ["tools/motesim/motesim.c"],
}


def installed_programs():
    names = set()
    for mb in glob.glob(os.path.join(ROOT, "**/meson.build"), recursive=True):
        text = open(mb).read()
        for m in re.finditer(r"executable\('([^']+)'[^)]*?install:\s*true", text, re.S):
            names.add(m.group(1))
    return names




def report(results):
    """Prints (name, ok, detail) results as TAP; the exit status."""
    print(f"1..{len(results)}")
    for i, (name, ok, detail) in enumerate(results, 1):
        print(f"{'ok' if ok else 'not ok'} {i} - {name}")
        if detail and not ok:
            print(f"# {detail}")
    return 0 if all(ok for _, ok, _ in results) else 1
