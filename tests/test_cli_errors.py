"""Bad input (a file, row or field) ends each command line in one line naming it, with exit status 1 and no
traceback, as a bad flag does; any other exception keeps its traceback (data.run_cli)."""

import json
import re
import subprocess
import sys

import pytest
from conftest import ROOT

import data
from model import InputError, MissingInput, load_config


def command(tmp_path, script, *args):
    """Run `python script args` in tmp_path: (exit status, stderr)."""
    done = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    return done.returncode, done.stderr


def test_eval_names_a_bad_row_in_one_line(tmp_path):
    good = '{"id": "1", "prompt": "q", "chosen": ["a", "b", "c"], "rejected": ["x", "y", "z"], "domain": "chat"}'
    (tmp_path / "rm.jsonl").write_text(good + "\n" + good.replace('"x", ', "").replace('"1"', '"2"') + "\n")
    rc, err = command(tmp_path, "eval.py", "--bench", "rm-bench", "--data", "rm.jsonl", "--out", "run", "--score-only")
    assert (rc, err) == (1, "eval.py: rm.jsonl:2: RM-Bench rows need 3 chosen and 3 rejected strings\n")
    assert not (tmp_path / "run").exists()


def test_sft_names_a_broken_model_config_in_one_line(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"vocab_size": 10,')
    rc, err = command(tmp_path, "sft.py", "--model", "model", "--data", "rows.jsonl", "--out", "run")
    assert rc == 1
    assert err == "sft.py: model/config.json: not valid JSON (Expecting property name enclosed in double quotes: " \
                  "line 1 column 19 (char 18))\n"
    assert not (tmp_path / "run").exists()


def test_a_bad_setting_is_one_line_named_by_the_script(tmp_path):
    rc, err = command(tmp_path, "eval.py", "--limit", "-1", "--data", "x.jsonl", "--model", "m", "--out", "run")
    assert (rc, err) == (1, "eval.py: --limit must be >= 0, got -1\n")
    rc, err = command(tmp_path, "sft.py", "--epochs", "0", "--data", "x.jsonl", "--model", "m")
    assert (rc, err) == (1, "sft.py: --epochs must be >= 1, got 0\n")
    rc, err = command(tmp_path, "sample.py", "--prompt", "hi")  # its messages name it already: not twice
    assert (rc, err) == (1, "sample.py: --model is required, not empty\n")
    rc, err = command(tmp_path, "eval.py", "--limit", "x")  # argparse's own message and status
    assert rc == 2 and err.endswith("eval.py: error: argument --limit: invalid int value: 'x'\n")
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_sample_names_a_folder_without_a_tokenizer_in_one_line(tmp_path):
    (tmp_path / "model").mkdir()
    rc, err = command(tmp_path, "sample.py", "--model", "model", "--prompt", "hi")
    assert (rc, err) == (1, "sample.py: model: no tokenizer.json (this loader reads the fast-tokenizer file only)\n")


def test_only_input_errors_lose_their_traceback(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/somewhere/eval.py", "--data", "x"])

    def bad_input():
        raise MissingInput("x.jsonl: no such file")

    with pytest.raises(SystemExit) as e:
        data.run_cli(bad_input)
    assert e.value.code == "eval.py: x.jsonl: no such file"  # exit status 1, the message on stderr
    assert isinstance(MissingInput("x"), InputError) and isinstance(MissingInput("x"), FileNotFoundError)
    assert isinstance(InputError("x"), ValueError)  # what callers of the library catch

    def bug():
        raise ValueError("an internal error")

    with pytest.raises(ValueError, match="an internal error"):  # not an InputError: the traceback stays
        data.run_cli(bug)


def test_eval_names_a_conversation_the_template_refuses_in_one_line(tmp_path):
    """The instruct judge prompt opens with a system turn; a checkpoint whose template refuses one (as Gemma's
    does) stops eval before anything is written."""
    from conftest import tiny_judge

    tiny_judge(tmp_path / "model")
    template = tmp_path / "model" / "chat_template.jinja"
    template.write_text("{%- if messages[0].role == 'system' %}{{- raise_exception('System role not supported') }}"
                        "{%- endif %}" + template.read_text())
    row = '{"id": "7", "prompt": "q", "chosen": ["a", "b", "c"], "rejected": ["x", "y", "z"], "domain": "chat"}'
    (tmp_path / "rm.jsonl").write_text(row + "\n")
    rc, err = command(tmp_path, "eval.py", "--model", "model", "--bench", "rm-bench", "--data", "rm.jsonl",
                      "--out", "run", "--device", "cpu", "--max-new-tokens", "2")
    assert (rc, err) == (1, "eval.py: model: pair chat/7/00 (chosen at A): the chat template failed on this "
                            "conversation: System role not supported\n")
    assert not (tmp_path / "run").exists()


def test_an_out_that_is_a_file_is_refused_before_any_work(tmp_path):
    """mkdir would fail on it only when the run first writes (sft: after loading the model and tokenizing)."""
    from conftest import tiny_judge

    tiny_judge(tmp_path / "model")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "rows.jsonl").write_text("")
    rc, err = command(tmp_path, "sft.py", "--model", "model", "--data", "rows.jsonl", "--out", "notes.txt/run")
    assert (rc, err) == (1, "sft.py: notes.txt/run: notes.txt is not a folder (--out names the run's folder)\n")
    for extra in ([], ["--score-only"]):
        rc, err = command(tmp_path, "eval.py", "--model", "model", "--bench", "rm-bench", "--data", "rows.jsonl",
                          "--out", "notes.txt", *extra)
        assert (rc, err) == (1, "eval.py: notes.txt: not a folder (--out names the run's folder)\n")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert data.run_folder(tmp_path / "new" / "run") == tmp_path / "new" / "run"  # not there yet: made when written


def test_sft_checks_the_weight_files_before_writing_its_folder(tmp_path):
    """The weights load after config.json is written; their absence is found first, and --out stays unmade."""
    from conftest import tiny_judge

    tiny_judge(tmp_path / "model")
    (tmp_path / "model" / "model.safetensors").unlink()
    row = {"context_messages": [{"role": "user", "content": "q"}], "winner": "model_a",
           "response": "<answer>[[A]]</answer>"}
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n")
    rc, err = command(tmp_path, "sft.py", "--model", "model", "--data", "rows.jsonl", "--out", "run")
    assert (rc, err) == (1, "sft.py: model: neither model.safetensors nor model.safetensors.index.json\n")
    assert not (tmp_path / "run").exists()


def test_a_training_run_folder_given_as_the_model_names_its_export(tmp_path, monkeypatch):
    """`--model runs/sft` instead of `runs/sft/hf` (an easy slip: sft writes its model inside its run folder). The
    errors are those of any folder that is not a model, with where the model is added."""
    from conftest import tiny_judge

    run = tmp_path / "runs" / "sft"
    tiny_judge(run / "hf")
    (run / "config.json").write_text(json.dumps({"model": "base", "global_batch": 128}))  # sft's own settings
    hint = "; runs/sft is a training run's folder, whose model is runs/sft/hf"
    rc, err = command(tmp_path, "sample.py", "--model", "runs/sft", "--prompt", "hi", "--device", "cpu")
    assert (rc, err) == (1, f"sample.py: runs/sft: no tokenizer.json (this loader reads the fast-tokenizer file "
                            f"only){hint}\n")
    rc, err = command(tmp_path, "sft.py", "--model", "runs/sft", "--data", "rows.jsonl", "--out", "run2")
    assert (rc, err) == (1, f"sft.py: runs/sft/config.json: unsupported architectures=[] (only Qwen2ForCausalLM and "
                            f"Qwen3ForCausalLM are implemented){hint}\n")
    assert not (tmp_path / "run2").exists()
    (run / "config.json").unlink()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingInput, match=r"^runs/sft: no config.json \(expected a Hugging Face model folder\)"
                                           + re.escape(hint) + "$"):
        load_config("runs/sft")
    with pytest.raises(MissingInput, match=r"^runs: no config.json \(expected a Hugging Face model folder\)$"):
        load_config("runs")  # no export inside: no hint
