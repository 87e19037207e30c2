"""The checkpoint folder (-i) is untrusted: no link or weight_map entry makes the build read or copy a file
from outside it, except a Hugging Face hub cache snapshot's links into its own repository's blobs folder.

Each refused row goes through the CLI: exit 2, one error line naming the file, no -o left behind, and the
outside file's bytes nowhere in what the run wrote or printed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from test_bad_input import OUT, assert_no_leftovers, run_cli, the_error_line

from builder_qwen3vl.checkpoint.paths import inside_checkpoint
from builder_qwen3vl.checkpoint.reader import read_checkpoint
from builder_qwen3vl.ground.errors import InputError

SECRET = b"OUTSIDE-THE-CHECKPOINT-7f3a9c"


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    """A folder beside the checkpoint holding a file the build must never read."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "secret.txt").write_bytes(SECRET)
    return folder


def _link(path: Path, target: Path | str) -> None:
    path.unlink(missing_ok=True)
    os.symlink(target, path)


def _tensor_names(shard: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(shard), framework="numpy") as f:
        return list(f.keys())


def _index_pointing_at(ckpt: Path, shard_name: str) -> None:
    names = _tensor_names(ckpt / "model.safetensors")
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {n: shard_name for n in names}}))


def _refused(capsys, ckpt: Path, tmp_path: Path, *fragments: str) -> str:
    """Run the CLI on ``ckpt``; check exit 2, one line with ``fragments``, nothing written, no secret leaked."""
    code, text = run_cli(capsys, "-i", ckpt, "-o", tmp_path / OUT, "-p", "fp32")
    line = the_error_line(text)
    print(f"exit {code}: {line}")
    assert code == 2
    for fragment in fragments:
        assert fragment in line, line
    assert_no_leftovers(tmp_path)
    assert SECRET not in text.encode()
    return line


def _no_secret_outside(tmp_path: Path, outside: Path) -> None:
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink() and outside not in path.parents:
            assert SECRET not in path.read_bytes(), f"{path} holds the outside file's bytes"


# ---------------------------------------------------------------- refused


def test_merges_linked_outside(small_ckpt: Path, tmp_path: Path, outside: Path, capsys) -> None:
    _link(small_ckpt / "merges.txt", outside / "secret.txt")
    _refused(capsys, small_ckpt, tmp_path,
             f"{small_ckpt / 'merges.txt'}: is a link to a file outside the checkpoint folder; expected a file inside {small_ckpt}")
    _no_secret_outside(tmp_path, outside)


def test_config_linked_outside(small_ckpt: Path, tmp_path: Path, outside: Path, capsys) -> None:
    (outside / "config.json").write_bytes((small_ckpt / "config.json").read_bytes())
    _link(small_ckpt / "config.json", outside / "config.json")
    _refused(capsys, small_ckpt, tmp_path, f"{small_ckpt / 'config.json'}: is a link to a file outside the checkpoint folder")


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "vocab.json",
                                  "generation_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
                                  "processor_config.json", "special_tokens_map.json"])
def test_any_read_or_copied_file_linked_outside(small_ckpt: Path, tmp_path: Path, outside: Path, capsys, name: str) -> None:
    _link(small_ckpt / name, outside / "secret.txt")
    _refused(capsys, small_ckpt, tmp_path, f"{small_ckpt / name}: is a link to a file outside the checkpoint folder")


@pytest.mark.parametrize("name", ["tokenizer.model", "additional_chat_templates/tool_use.jinja"])
def test_files_only_transformers_reads_linked_outside(small_ckpt: Path, tmp_path: Path, outside: Path, capsys,
                                                      name: str) -> None:
    """og's builder hands the folder to transformers, which loads more files by name than the reader does."""
    (small_ckpt / name).parent.mkdir(exist_ok=True)
    _link(small_ckpt / name, outside / "secret.txt")
    _refused(capsys, small_ckpt, tmp_path, f"{small_ckpt / name}: is a link to a file outside the checkpoint folder")


def test_weights_linked_outside(small_ckpt: Path, tmp_path: Path, outside: Path, capsys) -> None:
    shutil.move(small_ckpt / "model.safetensors", outside / "model.safetensors")
    _link(small_ckpt / "model.safetensors", outside / "model.safetensors")
    _refused(capsys, small_ckpt, tmp_path, f"{small_ckpt / 'model.safetensors'}: is a link to a file outside the checkpoint folder")


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_weight_map_outside(small_ckpt: Path, tmp_path: Path, outside: Path, capsys, kind: str) -> None:
    shutil.copy(small_ckpt / "model.safetensors", outside / "x.safetensors")
    shard = "../elsewhere/x.safetensors" if kind == "dotdot" else str(outside / "x.safetensors")
    _index_pointing_at(small_ckpt, shard)
    (small_ckpt / "model.safetensors").unlink()
    _refused(capsys, small_ckpt, tmp_path, f"{small_ckpt / 'model.safetensors.index.json'}: weight_map names shard '{shard}', "
             f"which is outside the checkpoint folder; expected a file name inside {small_ckpt}")


def test_weight_map_through_a_linked_folder(small_ckpt: Path, tmp_path: Path, outside: Path, capsys) -> None:
    shutil.move(small_ckpt / "model.safetensors", outside / "x.safetensors")
    _link(small_ckpt / "sub", outside)
    names = _tensor_names(outside / "x.safetensors")
    (small_ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: "sub/x.safetensors" for n in names}}))
    _refused(capsys, small_ckpt, tmp_path, f"{small_ckpt / 'sub' / 'x.safetensors'}: is outside the checkpoint folder")


def test_link_loop(small_ckpt: Path, tmp_path: Path, capsys) -> None:
    _link(small_ckpt / "merges.txt", small_ckpt / "merges.txt")
    _refused(capsys, small_ckpt, tmp_path, f"{small_ckpt / 'merges.txt'}:")


def test_fifo_as_weights(small_ckpt: Path, tmp_path: Path, capsys) -> None:
    """A named pipe would block the read forever: it is refused as not a regular file."""
    (small_ckpt / "model.safetensors").unlink()
    os.mkfifo(small_ckpt / "model-00001-of-00001.safetensors")
    _refused(capsys, small_ckpt, tmp_path, "model-00001-of-00001.safetensors: is not a regular file")


# ---------------------------------------------------------------- accepted


def test_links_inside_the_folder_are_followed(small_ckpt: Path) -> None:
    (small_ckpt / "real").mkdir()
    for name in ("tokenizer.json", "model.safetensors"):
        shutil.move(small_ckpt / name, small_ckpt / "real" / name)
        _link(small_ckpt / name, Path("real") / name)
    ckpt = read_checkpoint(small_ckpt)
    assert {info.file for info in ckpt.tensors.values()} == {small_ckpt / "model.safetensors"}
    assert inside_checkpoint(small_ckpt, small_ckpt / "tokenizer.json") == (small_ckpt / "real" / "tokenizer.json").resolve()


def test_input_folder_given_through_a_link(small_ckpt: Path, tmp_path: Path) -> None:
    _link(tmp_path / "alias", small_ckpt)
    assert read_checkpoint(tmp_path / "alias").config.text.vocab_size == 512


def _hub_cache(src: Path, root: Path, repo_name: str = "models--org--tiny") -> Path:
    """``src`` laid out as the hub cache does: every file moved to blobs/<sha256>, linked from snapshots/<rev>/."""
    repo = root / repo_name
    blobs, snapshot = repo / "blobs", repo / "snapshots" / "0123abcd"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in sorted(src.iterdir()):
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copy2(path, blobs / sha)
        os.symlink(f"../../blobs/{sha}", snapshot / path.name)
    return snapshot


def test_hub_cache_layout_reads(small_ckpt: Path, tmp_path: Path) -> None:
    snapshot = _hub_cache(small_ckpt, tmp_path / "hub")
    ckpt = read_checkpoint(snapshot)
    plain = read_checkpoint(small_ckpt)
    assert ckpt.config == plain.config and set(ckpt.tensors) == set(plain.tensors)
    assert [p.name for p in ckpt.tokenizer_files] == [p.name for p in plain.tokenizer_files]
    assert all(p.parent == snapshot for p in ckpt.tokenizer_files)  # named as in the snapshot, not by blob hash


def test_hub_cache_link_into_another_repository_is_refused(small_ckpt: Path, tmp_path: Path, capsys) -> None:
    snapshot = _hub_cache(small_ckpt, tmp_path / "hub")
    other = tmp_path / "hub" / "models--evil--repo" / "blobs"
    other.mkdir(parents=True)
    (other / "deadbeef").write_bytes(SECRET)
    _link(snapshot / "merges.txt", "../../../models--evil--repo/blobs/deadbeef")
    line = _refused(capsys, snapshot, tmp_path, f"{snapshot / 'merges.txt'}: is a link to a file outside the checkpoint folder",
                    "Hugging Face cache")
    assert str((tmp_path / "hub" / "models--org--tiny" / "blobs").resolve()) in line


def test_blobs_count_only_for_a_snapshot_folder(small_ckpt: Path, tmp_path: Path) -> None:
    """A folder that merely has a sibling 'blobs' two levels up is not a snapshot: the exception does not apply."""
    repo = tmp_path / "repo"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "x").write_bytes(SECRET)
    folder = repo / "not_snapshots" / "rev"
    folder.mkdir(parents=True)
    _link(folder / "merges.txt", repo / "blobs" / "x")
    with pytest.raises(InputError, match="is a link to a file outside the checkpoint folder"):
        inside_checkpoint(folder, folder / "merges.txt")


def test_hub_cache_layout_builds(tmp_path: Path, capsys) -> None:
    """One full fp32 build from a hub cache snapshot (real tokenizer: og's builder reads it): the bundle holds
    the files' contents, not links into the cache."""
    from builder_qwen3vl.testing.checkpoints import tiny_config, write_checkpoint

    src = write_checkpoint(tmp_path / "src", tiny_config(vocab_size=512))
    snapshot = _hub_cache(src, tmp_path / "hub")
    code, text = run_cli(capsys, "-i", snapshot, "-o", tmp_path / OUT, "-p", "fp32")
    assert code == 0, text
    bundle = tmp_path / OUT
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        assert not (bundle / name).is_symlink()
        assert (bundle / name).read_bytes() == (src / name).read_bytes()


def _layers_absurd(ckpt: Path, tmp_path: Path) -> None:
    config = json.loads((ckpt / "config.json").read_text())
    config.setdefault("text_config", config)["num_hidden_layers"] = 10**9
    (ckpt / "config.json").write_text(json.dumps(config))


def _merges_outside(ckpt: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the bundle\n")
    (ckpt / "merges.txt").unlink(missing_ok=True)
    (ckpt / "merges.txt").symlink_to(secret)


@pytest.mark.parametrize("break_it", [_merges_outside, _layers_absurd], ids=["merges_outside", "layers_absurd"])
def test_refusals_through_the_library_leave_the_process_as_found(small_ckpt: Path, tmp_path: Path, break_it) -> None:
    """``build()`` refusing a hostile checkpoint: InputError, nothing written, the caller's process unchanged."""
    from builder_qwen3vl import BuildOptions, InputError, build
    from builder_qwen3vl.ground.process_state import differences, snapshot

    break_it(small_ckpt, tmp_path)
    before = snapshot()
    with pytest.raises(InputError):
        build(BuildOptions(input=small_ckpt, output=tmp_path / OUT, precision="fp32"))
    assert differences(before, snapshot()) == []
    assert_no_leftovers(tmp_path)
