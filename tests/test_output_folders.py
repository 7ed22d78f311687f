"""Issue 13: whatever a file or a flag says, simdl writes inside the run folder only,
refuses a bad output path in one line before it runs, and never leaves a folder that
looks like a result but is not one whole run."""
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml
from test_cli import assert_one_clear_line

from simdl import api
from simdl.cli import main
from simdl.report import plots
from simdl.report.store import atomic_write, folder_name, new_run_id

ROOT = Path(__file__).resolve().parents[1]
RULE = r"use 1 to 64 ASCII letters, digits, '_', '.' or '-', not starting with '.'"


def scenario(folder: Path, name: str = "quick", labels: tuple[str, ...] = ("phone",)) -> Path:
    """A small quickstart (4 requests, one `single` strategy per label) in `folder`."""
    data = yaml.safe_load((ROOT / "scenarios" / "quickstart.yaml").read_text())
    data["name"] = name
    data["workload"]["requests"] = 4
    data["strategies"] = [{"name": "single", "label": label, "device": "phone"} for label in labels]
    path = folder / f"scenario-{len(list(folder.glob('scenario-*')))}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def tree(folder: Path) -> set[Path]:
    """Every path under `folder`, hidden ones too."""
    return {p.relative_to(folder) for p in folder.rglob("*")}


@pytest.fixture
def no_run(monkeypatch):
    """Make running a scenario a test failure: what is refused is refused before."""
    def refuse(*args, **kwargs):
        raise AssertionError("the simulation ran")
    monkeypatch.setattr(api, "run", refuse)


@pytest.fixture
def dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


ABSOLUTE = "/tmp/simdl-absolute-escape"
REFUSED = {
    "traversal name": ("name", "../../escape_by_name"),
    "empty name": ("name", ""),
    "absolute name": ("name", ABSOLUTE),
    "long name": ("name", "n" * 300),
    "non-ASCII name": ("name", "café"),
    "dot name": ("name", ".."),
    "traversal label": ("label", "../../../escaped"),
    "absolute label": ("label", ABSOLUTE),
    "empty label": ("label", ""),
    "long label": ("label", "x" * 300),
    "non-ASCII label": ("label", "téléphone"),
    "hidden label": ("label", ".phone"),
}


@pytest.mark.parametrize("field, value", REFUSED.values(), ids=REFUSED)
@pytest.mark.parametrize("flag", ["--out", "--results"])
def test_a_name_that_is_not_one_folder_is_refused_before_anything_runs(field, value, flag,
                                                                       tmp_path, capsys, no_run):
    sandbox = tmp_path / "a" / "b" / "sandbox"
    sandbox.mkdir(parents=True)
    path = scenario(tmp_path, **({"name": value} if field == "name" else {"labels": (value,)}))
    before = tree(tmp_path)
    where = "name" if field == "name" else r"strategies\[0\]\.label"
    assert_one_clear_line(["run", str(path), flag, str(sandbox / "out")],
                          rf"^{where}: .* is not valid; {RULE}", capsys)
    assert tree(tmp_path) == before and not Path(ABSOLUTE).exists()


SWEPT = {  # labels as a sweep makes them: any value, written safely
    "traversal value": ("phone[cut=../../../escaped]", "phone[cut=..%2F..%2F..%2Fescaped]"),
    "absolute value": (f"phone[cut={ABSOLUTE}]", "phone[cut=%2Ftmp%2Fsimdl-absolute-escape]"),
    "non-ASCII value": ("phone[who=é]", "phone[who=%C3%A9]"),
    "leading dot": (".[k=v]", "%2E[k=v]"),
}


@pytest.mark.parametrize("label, folder", SWEPT.values(), ids=SWEPT)
def test_a_sweep_label_is_written_inside_the_run_folder(label, folder, tmp_path, capsys):
    sandbox = tmp_path / "a" / "b" / "sandbox"
    sandbox.mkdir(parents=True)
    path = scenario(tmp_path, labels=(label,))
    before = tree(tmp_path)
    assert main(["run", str(path), "--out", str(sandbox / "out"), "--timing-only"]) == 0
    new = tree(tmp_path) - before
    assert new and all(p.parts[:4] == ("a", "b", "sandbox", "out") for p in new), sorted(new)
    assert not Path(ABSOLUTE).exists()
    assert [p.name for p in (sandbox / "out").iterdir() if p.is_dir()] == [folder]
    assert (sandbox / "out" / folder / "summary.csv").is_file()


def test_a_sweep_gets_one_readable_folder_per_value(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(ROOT / "scenarios" / "offload.yaml"), "--out", str(out),
                 "--strategy", "edge[cut=2]", "--timing-only"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["edge[cut=2]"]


@pytest.mark.parametrize("label", ["phone", "a b/../c", "%2F", "/", ".", "..", ".x", "é€",
                                   "[k=v]", "x\n", "\udc80"])
def test_a_folder_name_is_one_name_and_gives_the_label_back(label):
    """The rule is injective (percent-decoding inverts it) and never makes a path."""
    name = folder_name(label)
    assert "/" not in name and not name.startswith(".") and name.isascii() and name.isprintable()
    assert unquote(name, errors="surrogatepass") == label


@pytest.mark.parametrize("labels, allowed", [
    (("summary.csv",), "a name other than the run folder's own files"),
    (("Comparison.PNG",), "a name other than the run folder's own files"),
    (("phone", "PHONE"), "a label whose folder differs from 'phone' in more than letter case"),
    (("p[k=" + "v" * 200 + "]",), "a label whose folder name .* is 1 to 200 characters"),
])
def test_labels_whose_folders_would_clash_or_not_fit_are_refused(labels, allowed, tmp_path,
                                                                 capsys, no_run):
    path = scenario(tmp_path, labels=labels)
    assert_one_clear_line(["run", str(path), "--out", str(tmp_path / "out")],
                          rf"^strategies\[{len(labels) - 1}\]\.label: .* is not valid; {allowed}",
                          capsys)
    assert not (tmp_path / "out").exists()


def paths(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "folder").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    return {"file": tmp_path / "file", "folder": tmp_path / "folder", "full": tmp_path / "full"}


UNDER_FILE = r"a path under a folder \('.*file' is a file\)$"
PATH_ERRORS = {
    "--out a file": (["run", "--out", "{file}"],
                     "^--out: .* a folder to write the run in; this is a file$"),
    "--out under a file": (["run", "--out", "{file}/sub"], f"^--out: .* is not valid; {UNDER_FILE}"),
    "--results a file": (["run", "--results", "{file}"],
                         f"^--results: .* is not valid; {UNDER_FILE}"),
    "--results under a file": (["run", "--results", "{file}/sub/deeper"],
                               f"^--results: .*sub/deeper' is not valid; {UNDER_FILE}"),
    "--out a full folder": (["run", "--out", "{full}"],
                            ("^--out: .* is not valid; a new or empty folder; "
                             "add --overwrite to replace this run folder whole$")),
    "--overwrite a folder that is not a run": (
        ["run", "--out", "{full}", "--overwrite"],
        r"^--out: .* --overwrite replaces only a run folder \(one holding scenario.resolved.yaml\)"),
    "--csv a folder": (["compare", "--csv", "{folder}"],
                       "^--csv: .* is not valid; a file to write; this is a folder$"),
    "--csv in a missing folder": (["compare", "--csv", "{folder}/missing/t.csv"],
                                  (r"^--csv: .* a path in an existing folder \('.*missing' "
                                   r"does not exist\)$")),
    "--csv under a file": (["compare", "--csv", "{file}/t.csv"], f"^--csv: .* {UNDER_FILE}"),
}


@pytest.mark.parametrize("argv, expect", PATH_ERRORS.values(), ids=PATH_ERRORS)
def test_a_bad_output_path_is_one_line_before_the_run(argv, expect, tmp_path, capsys, no_run):
    where = paths(tmp_path)
    path = scenario(tmp_path)
    before = {p: (p.stat().st_mtime_ns, p.is_dir()) for p in tmp_path.rglob("*")}
    command, *flags = [a.format(**where) for a in argv]
    assert_one_clear_line([command, str(path), *flags], expect, capsys)
    assert {p: (p.stat().st_mtime_ns, p.is_dir()) for p in tmp_path.rglob("*")} == before


def files(folder: Path) -> dict[Path, bytes]:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_replaces_the_run_folder_whole(tmp_path, capsys):
    """A rerun with fewer strategies, another seed: no stale strategy folder stays."""
    out = tmp_path / "out"
    assert main(["run", str(scenario(tmp_path, labels=("phone", "old"))), "--out", str(out),
                 "--timing-only"]) == 0
    assert main(["run", str(scenario(tmp_path)), "--out", str(out), "--overwrite", "--seed", "7",
                 "--timing-only"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["phone"]
    assert "seed: 7" in (out / "phone" / "scenario.resolved.yaml").read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_an_empty_out_folder_is_used_as_it_is(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert main(["run", str(scenario(tmp_path)), "--out", str(out), "--timing-only"]) == 0
    assert (out / "phone" / "events.csv").is_file()


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_an_interrupted_run_leaves_no_folder(tmp_path, capsys, monkeypatch):
    """Interrupted after the strategy folders, at the comparison: nothing is left,
    under --out or as a numbered folder (which the next run then gets)."""
    path = scenario(tmp_path)
    monkeypatch.setattr(plots, "comparison", interrupt)
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--timing-only"]) == 130
    assert main(["run", str(path), "--results", str(tmp_path / "res"), "--timing-only"]) == 130
    assert tree(tmp_path) == {Path(path.name), Path("res"), Path("res/quick")}
    monkeypatch.undo()
    assert main(["run", str(path), "--results", str(tmp_path / "res"), "--timing-only"]) == 0
    assert os.listdir(tmp_path / "res" / "quick") == ["0001"]


def test_an_interrupted_overwrite_keeps_the_old_run_whole(tmp_path, capsys, monkeypatch):
    path, out = scenario(tmp_path), tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--timing-only"]) == 0
    old = files(out)
    monkeypatch.setattr(plots, "comparison", interrupt)
    assert main(["run", str(path), "--out", str(out), "--overwrite", "--seed", "5",
                 "--timing-only"]) == 130
    assert files(out) == old
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


KILLED = """
import os, sys
from simdl.report import plots
def killed(*args, **kwargs):
    os._exit(9)  # as SIGKILL: no cleanup runs
plots.comparison = killed
from simdl.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("flag", ["--out", "--results"])
def test_a_killed_run_leaves_only_a_hidden_incomplete_folder_the_next_run_removes(flag, tmp_path,
                                                                                  capsys):
    path, target = scenario(tmp_path), tmp_path / "target"
    argv = ["run", str(path), flag, str(target), "--timing-only"]
    proc = subprocess.Popen([sys.executable, "-c", KILLED, *argv], stderr=subprocess.PIPE,
                            text=True)
    _, err = proc.communicate()
    assert proc.returncode == 9, err
    parent = target / "quick" if flag == "--results" else tmp_path
    left = [p.name for p in parent.iterdir() if p.name != path.name]
    assert len(left) == 1 and left[0].startswith(".") and f".incomplete-{proc.pid}-" in left[0]
    assert (parent / left[0] / "phone" / "events.csv").is_file()  # written, never published
    assert main(argv) == 0
    expected = ["0001"] if flag == "--results" else [path.name, "target"]
    assert sorted(os.listdir(parent)) == expected


def test_a_killed_writers_temporary_file_is_removed_a_live_ones_kept(tmp_path, dead_pid):
    dead = tmp_path / f".t.csv.incomplete-{dead_pid}-abc.tmp"
    live = tmp_path / f".t.csv.incomplete-{os.getppid()}-abc.tmp"
    for p in (dead, live):
        p.write_text("half")
    atomic_write(tmp_path / "t.csv", "a\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "t.csv"])


def test_run_ids_given_with_contents_are_never_shared_nor_burnt(tmp_path):
    """32 finished runs claim ids at once: 32 distinct ids, each holding its own files;
    a run that never finished (its folder never handed over) takes none."""
    folder = tmp_path / "quick"
    folder.mkdir()
    (folder / ".run.incomplete-1-x").mkdir()  # a run still being written
    staged = []
    for i in range(32):
        (folder / f".s{i}").mkdir()
        (folder / f".s{i}" / "mine").write_text(str(i))
        staged.append(folder / f".s{i}")
    ids: dict[int, str] = {}

    def claim(i: int) -> None:
        ids[i] = new_run_id(folder, contents=staged[i])

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(ids.values()) == [f"{n:04d}" for n in range(1, 33)]
    for i, run_id in ids.items():
        assert (folder / run_id / "mine").read_text() == str(i)


@pytest.mark.parametrize("out", [".", ".."])
def test_the_current_folder_is_never_the_run_folder(out, tmp_path, capsys, monkeypatch, no_run):
    """Renaming a finished run onto it (or replacing it) would pull the folder out from
    under the shell that started simdl."""
    path = scenario(tmp_path)
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    assert_one_clear_line(["run", str(path), "--out", out, "--overwrite"],
                          rf"^--out: '{re.escape(out)}' is not valid; a folder outside the current "
                          r"one", capsys)
    assert os.listdir(tmp_path / "here") == []
