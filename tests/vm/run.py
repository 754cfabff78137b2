"""`python -m tests.vm.run IMAGE_DIR [--kernel stock|backports] [--html FILE]`: the VM tier's
story on one booted guest (scripts/vm-test.sh builds the image and calls this). Prints each
step's expected-vs-observed tables, the timings, and ends with `N passed, M failed`.
--html FILE also writes the run as one self-contained page, as `demo --html` does
(tests/harness/report.py records, tests/harness/report_html.py page), with the timings."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback

from tests.harness import netns
from tests.harness.report import failed_record, report_document, step_record
from tests.harness.report_html import render

from .agent import GuestAgent
from .install import installer
from .lab import VmLab
from .scenarios import VmStory

POLICY = os.path.join(os.path.dirname(__file__), "..", "..", "packaging", "examples", "policies",
                      "valid", "jump-and-rmm.json")


STEPS = ["install", "isolate", "tamper", "reboot", "stop", "kill9", "watchdog", "upgrade", "release",
         "purge"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.vm.run")
    ap.add_argument("image_dir")
    ap.add_argument("--kernel", default="stock", choices=["stock", "backports"])
    ap.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report")
    ap.add_argument("--until", choices=STEPS, default=STEPS[-1],
                    help="stop the story after this step (install always runs; default: all)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    say = lambda m: print(f"[{time.monotonic() - t0:6.1f}s] {m}", flush=True)
    passed, failed, figures, records = 0, 0, {}, []
    work = tempfile.mkdtemp(prefix="cordon-vm-build-")
    inst = installer(work)
    say(f"building the agent for the guest: {inst.kind}")
    inst.build()
    figures["agent build"] = round(time.monotonic() - t0, 1)
    policy = json.load(open(POLICY))
    with VmLab(image_dir=args.image_dir, log=say) as lab:
        figures["boot: shell after power-on"] = round(lab.boot_seconds, 1)
        figures["boot: multi-user.target after power-on"] = round(lab.multi_user_seconds, 1)
        lab_namespaces = list(lab.namespaces)
        story = VmStory(lab, GuestAgent(lab), inst, policies=[policy])
        story_steps = {
            "install": story.install,
            "isolate": lambda: (story.agent.policy_set(policy), story.model.policy_set(policy),
                                story.isolate())[2],
            "tamper": lambda: story.tamper("detect-and-repair" if args.kernel == "stock" else "blocked"),
            "reboot": story.reboot, "stop": story.service_stop, "kill9": story.kill9,
            "watchdog": story.watchdog, "upgrade": story.upgrade, "release": story.release,
            "purge": story.purge}
        for name in STEPS[:STEPS.index(args.until) + 1]:
            fn = story_steps[name]
            s0 = time.monotonic()
            try:
                step = fn()
                print(step.render(), flush=True)
                ok = step.ok
                title = step.title
                if args.html:  # one more guest command per step: only when asked for
                    records.append(step_record(step, lab, _status(story.agent), story.model,
                                               story.agent.config))
            except Exception as e:  # a broken step is a failure, and the story goes on
                title = name
                print(f"### {title}: ERROR {type(e).__name__}: {e}\n{traceback.format_exc()[-2000:]}")
                ok = False
                records.append(failed_record(title, f"ERROR {type(e).__name__}: {e}",
                                             round(time.monotonic() - s0, 1)))
            figures[f"step: {title}"] = round(time.monotonic() - s0, 1)
            print(f"--> {title}: {'PASS' if ok else 'FAIL'} ({time.monotonic() - s0:.1f}s)\n", flush=True)
            passed, failed = passed + ok, failed + (not ok)
        figures.update(story.figures)
    # Teardown removed what this run made (other engineers' labs may be up: judge only ours).
    left = [ns for ns in lab_namespaces if ns in netns.list_namespaces()]
    if left or (lab.guest and lab.guest.proc and lab.guest.proc.poll() is None):
        msg = (f"TEARDOWN left behind: namespaces {left}, qemu running: "
               f"{bool(lab.guest and lab.guest.proc and lab.guest.proc.poll() is None)}")
        print(msg)
        records.append(failed_record("teardown", msg))
        failed += 1
    figures["total"] = round(time.monotonic() - t0, 1)
    print("timings (s):")
    for k, v in figures.items():
        print(f"  {k:45} {v}")
    print(f"{passed} passed, {failed} failed")
    if args.html:
        with open(args.html, "w") as f:
            f.write(render(report_document(
                records, title=f"Cordon VM tier ({args.kernel} kernel)", config=story.agent.config,
                generated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), lab=lab.runid,
                figures=figures)))
        print(f"report: {args.html}")
    return 0 if failed == 0 else 1


def _status(agent) -> dict | None:
    """`cordon status --json` after a step, or None while the agent is not running."""
    try:
        return agent.status() if agent.alive else None
    except Exception:  # a broken status is the step's problem (Story.status_problems), not the report's
        return None


if __name__ == "__main__":
    sys.exit(main())
