"""Bad training input fails in one line naming the file, line, field or flag, before anything is trained."""

import json
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from aloekit.errors import AloeError, ConfigError
from aloekit.training import TrainingDataError, build_train_config, check_train_inputs, load_rows
from aloekit.training.train import check_init_adapter, check_output_dir

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
GOOD_LINE = json.dumps(GOOD) + "\n"
PLACES = {"data": "d.jsonl", "base": "hf:x", "out": "o"}


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message and "\r" not in message
    return message


# Data files ---------------------------------------------------------------------------------------------


def test_a_parquet_file_is_named_not_read_as_text(tmp_path):
    path = tmp_path / "rollouts.parquet"
    path.write_bytes(b"PAR1\x15\x04")
    with pytest.raises(TrainingDataError, match=r"rollouts.parquet: .parquet files are not read; give the .jsonl"):
        load_rows(path, "sft")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (GOOD_LINE.encode() + b'{"messages": "\xff"}\n', r"line 2: not UTF-8 text \(byte 0xff at column 15\)"),
        (GOOD_LINE.encode() + b"\n{bad\n", r"line 3: invalid JSON: Expecting property name .*\(column 2\)"),
        (GOOD_LINE.encode() + b"[" * 100_000 + b"\n", "line 2: JSON nested too deeply"),
        (b"", "no rows to train on"),
        (b"\n  \n", "no rows to train on"),
        (GOOD_LINE.encode() + b"\n[1]\n", "line 3: expected an object, got list"),
        (b'{"messages": "hi"}\n', "line 1: field 'messages' must be a non-empty list"),
        (b'{"messages": [{"role": ["user"], "content": "x"}]}\n', r"line 1: field 'messages\[0\].role' must be one"),
        (b'{"prompt": [{"role": "user", "content": "x"}]}\n', "line 1: missing field 'completion'"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    with pytest.raises(TrainingDataError, match=message) as excinfo:
        load_rows(path, "sft")
    assert str(path) in one_line(excinfo)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xfe\n", r"line 1: not UTF-8 text"),
        (GOOD_LINE.encode() + b"{bad\n", "line 2: invalid JSON"),
        (b"[" * 100_000, "line 1: JSON nested too deeply"),
        (b"[1]\n", "line 1: expected an object"),
        (b"", "empty validation split"),
        (b'{"prompt": [], "chosen": []}\n', "line 1: "),
    ],
)
def test_bad_validation_file_beside_good_data_is_named(tmp_path, content, message):
    (tmp_path / "d.jsonl").write_text(GOOD_LINE)
    val = tmp_path / "d.val.jsonl"
    val.write_bytes(content)
    with pytest.raises(TrainingDataError, match=message) as excinfo:
        load_rows(tmp_path / "d.jsonl", "sft")
    assert str(val) in one_line(excinfo)


def test_validation_split_is_read_beside_the_data(tmp_path):
    (tmp_path / "d.jsonl").write_text(GOOD_LINE * 3)
    (tmp_path / "d.val.jsonl").write_text(GOOD_LINE)
    train, val = load_rows(tmp_path / "d.jsonl", "sft")
    assert (len(train), len(val)) == (3, 1)
    (tmp_path / "d.val.jsonl").unlink()
    (tmp_path / "d.val.jsonl").mkdir()
    with pytest.raises(TrainingDataError, match=r"d.val.jsonl: is a folder, not a file"):
        load_rows(tmp_path / "d.jsonl", "sft")


def test_missing_data(tmp_path):
    with pytest.raises(TrainingDataError, match=r"training data .*none.jsonl: not found") as excinfo:
        load_rows(tmp_path / "none.jsonl", "sft")
    one_line(excinfo)


def _save(folder, splits):
    DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items()}).save_to_disk(str(folder))
    return folder


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda p: p.mkdir(), "not a dataset saved with --hf-dataset"),
        (lambda p: (p.mkdir(), (p / "x.jsonl").write_text(GOOD_LINE)), "not a dataset saved with --hf-dataset"),
        (lambda p: _save(p, {"validation": [GOOD]}), r"has no 'train' split \(it has \['validation'\]\)"),
        (lambda p: _save(p, {"train": [{"x": 1}]}), r"\(train split\): row 1: missing fields"),
        (lambda p: _save(p, {"train": [GOOD], "validation": [{"x": 1}]}), r"\(validation split\): row 1: missing"),
    ],
    ids=["empty-folder", "plain-folder", "no-train-split", "bad-train-row", "bad-validation-row"],
)
def test_hf_dataset_folder_that_is_not_usable(tmp_path, build, message):
    folder = tmp_path / "ds"
    build(folder)
    with pytest.raises(TrainingDataError, match=message) as excinfo:
        load_rows(folder, "sft")
    assert str(folder) in one_line(excinfo)


def test_corrupt_hf_dataset_folder(tmp_path):
    folder = _save(tmp_path / "ds", {"train": [GOOD]})
    for arrow in folder.rglob("*.arrow"):
        arrow.write_bytes(b"garbage")
    with pytest.raises(TrainingDataError, match="not a dataset saved with --hf-dataset") as excinfo:
        load_rows(folder, "sft")
    one_line(excinfo)


# TrainConfig ranges and trl options ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": -1}, r"field epochs \(--epochs\): Input should be greater than 0"),
        ({"epochs": 0}, r"field epochs \(--epochs\): Input should be greater than 0"),
        ({"epochs": float("inf")}, r"field epochs \(--epochs\): Input should be a finite number"),
        ({"max_steps": 0}, r"field max_steps \(--max-steps\): .*at least 1, or -1"),
        ({"max_steps": -5}, r"field max_steps \(--max-steps\): .*at least 1, or -1"),
        ({"max_length": 8}, r"field max_length \(--max-length\): .*greater than or equal to 16"),
        ({"beta": 0}, r"field beta \(--beta\): Input should be greater than 0"),
        ({"seed": -1}, r"field seed \(--seed\)"),
        ({"lora": {"r": 0}}, r"field lora.r \(--lora-r\)"),
        ({"lora": {"alpha": 0}}, r"field lora.alpha \(--lora-alpha\)"),
        ({"lora": {"dropout": 1.0}}, r"field lora.dropout \(--lora-dropout\): Input should be less than 1"),
        ({"lora": {"dropout": -0.1}}, r"field lora.dropout \(--lora-dropout\)"),
        ({"lora": {"target_modules": ""}}, r"field lora.target_modules \(--target-modules\): .*at least one module"),
        ({"lora": {"target_modules": []}}, r"field lora.target_modules \(--target-modules\)"),
        (
            {"trl": {"learning_rat": 1e-4}},
            r"field trl.learning_rat \(--trl learning_rat=...\): not a DPOConfig field "
            r"\(did you mean learning_rate\?\)",
        ),
        ({"trl": {"learning_rate": "fast"}}, r"field trl.learning_rate .*expected a number, got 'fast'"),
        ({"trl": {"learning_rate": 0}}, r"field trl.learning_rate .*greater than 0"),
        ({"trl": {"per_device_train_batch_size": 0}}, r"field trl.per_device_train_batch_size .*greater than 0"),
        # Past sys.maxsize, trl's sampler failed mid-run (islice) after the run row and the output folder.
        ({"trl": {"per_device_train_batch_size": 10**23}}, r"field trl.per_device_train_batch_size .*at most 65536"),
        ({"batch_size": str(10**23)}, r"field batch_size \(--batch-size\): .*from 1 to 65536, or auto"),
        (
            {"trl": {"gradient_accumulation_steps": 1.5}},
            r"field trl.gradient_accumulation_steps .*expected an integer, got 1.5",
        ),
        ({"trl": {"lr_scheduler_type": "bogus"}}, r"field trl.lr_scheduler_type .*DPOConfig rejected it: bogus is"),
        ({"trl": {"logging_steps": 0}}, r"field trl.logging_steps .*DPOConfig rejected it"),
        ({"trl": {"num_train_epochs": 3}}, r"field trl.num_train_epochs .*set epochs \(--epochs\) instead"),
        ({"trl": {"beta": 0.1}}, r"field trl.beta .*set beta \(--beta\) instead"),
        ({"trl": {"max_steps": 3}}, r"field trl.max_steps .*set max_steps \(--max-steps\) instead"),
    ],
)
def test_train_config_ranges_and_trl_options_name_the_flag(overrides, message):
    with pytest.raises(ConfigError, match=r"^train config: " + message) as excinfo:
        build_train_config("dpo", **PLACES, **overrides)
    one_line(excinfo)


def test_trl_fields_of_the_other_method_are_refused():
    with pytest.raises(ConfigError, match=r"trl.beta .*not a SFTConfig field"):
        build_train_config("sft", **PLACES, trl={"beta": 0.1})


def test_valid_trl_options_pass():
    config = build_train_config("sft", **PLACES, trl={"learning_rate": 1e-3, "report_to": "none", "warmup_steps": 2})
    assert config.trl["learning_rate"] == 1e-3 and config.trl["lr_scheduler_type"] == "cosine"  # shipped ones kept


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"epochs: -1\n", r"field epochs: Input should be greater than 0"),
        (b"lora: 3\n", r"field lora: Input should be a valid dictionary"),
        (b"lora:\n  alpha: 0\n", r"field lora.alpha: Input should be greater than 0"),
        (b"trl: [1]\n", r"field trl: Input should be a valid dictionary"),
        (b"trl:\n  bogus: 1\n", r"field trl.bogus: not a SFTConfig field"),
        (b"epoch: 2\n", r"field epoch: Extra inputs are not permitted"),
        (b"epochs: .inf\n", r"field epochs: Input should be a finite number"),
        (b"max_length: \xff\n", r"line 1: not UTF-8 text"),
        (b"lora:\n\tr: 2\n", r"invalid YAML: line 2: "),
        (b"trl: " + b"[" * 100_000, "nested too deeply to read"),
    ],
)
def test_train_config_file_errors_name_the_file(tmp_path, text, message):
    path = tmp_path / "train.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError, match=f"^train config {path}: {message}") as excinfo:
        build_train_config("sft", path, **PLACES, lora={}, trl={})  # {}: what the CLI passes without flags
    one_line(excinfo)


def test_train_config_file_must_exist(tmp_path):
    with pytest.raises(ConfigError, match=r"train config .*none.toml: not found"):
        build_train_config("sft", tmp_path / "none.toml", **PLACES)
    with pytest.raises(ConfigError, match=r"train config .*: is a folder, not a file"):
        build_train_config("sft", tmp_path, **PLACES)


def test_flags_beat_the_file_and_tables_merge(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text("epochs = 2.0\n[lora]\nr = 4\n[trl]\nlearning_rate = 0.01\n")
    config = build_train_config("sft", path, **PLACES, epochs=3.0, lora={"alpha": 8}, trl={})
    assert (config.epochs, config.lora.r, config.lora.alpha, config.trl["learning_rate"]) == (3.0, 4, 8, 0.01)
    assert config.trl["logging_steps"] == 1  # the shipped defaults are kept under the file's table


# --out and --init-adapter -------------------------------------------------------------------------------


def test_out_that_cannot_be_a_folder(tmp_path):
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    with pytest.raises(ConfigError, match=r"^--out .*file.txt: is a file, not a folder$") as excinfo:
        check_output_dir(afile, overwrite=True)
    one_line(excinfo)
    with pytest.raises(ConfigError, match=r"^--out .*file.txt/a/b: .*file.txt is a file, not a folder$"):
        check_output_dir(afile / "a" / "b", overwrite=False)
    check_output_dir(tmp_path / "new" / "adapter", overwrite=False)
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".aloe-*"))  # checking leaves nothing
    # Where no folder can be made, even by root, whom no permission bit stops (trainers crashed there).
    with pytest.raises(ConfigError, match=r"^--out /proc/adapter: cannot create a folder in /proc: "):
        check_output_dir(Path("/proc/adapter"), overwrite=False)


def _adapter(folder, config=b'{"peft_type": "LORA"}', weights=True):
    folder.mkdir()
    if config is not None:
        (folder / "adapter_config.json").write_bytes(config)
    if weights:
        (folder / "adapter_model.safetensors").write_bytes(b"")
    return folder


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda p: None, r"^--init-adapter .*ad: not found$"),
        (lambda p: p.write_text("x"), r"^--init-adapter .*ad: not a folder"),
        (lambda p: _adapter(p, config=None), r"^--init-adapter .*ad: no adapter_config.json there"),
        (lambda p: _adapter(p, config=b"{\n  bad"), r"^adapter config .*adapter_config.json: line 2: invalid JSON"),
        (lambda p: _adapter(p, config=b"\xff"), r"^adapter config .*adapter_config.json: line 1: not UTF-8 text"),
        (lambda p: _adapter(p, config=b"[" * 100_000), r"adapter_config.json: JSON nested too deeply"),
        (lambda p: _adapter(p, config=b"[]"), r"adapter_config.json: not a peft adapter config"),
        (lambda p: _adapter(p, weights=False), r"^--init-adapter .*ad: no adapter weights there"),
    ],
    ids=["missing", "file", "no-config", "bad-json", "bytes", "deep", "not-object", "no-weights"],
)
def test_corrupt_init_adapter(tmp_path, build, message):
    build(tmp_path / "ad")
    with pytest.raises(ConfigError, match=message) as excinfo:
        check_init_adapter(tmp_path / "ad")
    one_line(excinfo)


def test_check_train_inputs_fails_before_reading_a_model(tmp_path, tiny_model_dir):
    data = tmp_path / "d.jsonl"
    data.write_text(GOOD_LINE)
    base = f"hf:{tiny_model_dir}"
    config = build_train_config("sft", data=data, base=base, out=tmp_path / "out", init_adapter=tmp_path)
    with pytest.raises(ConfigError, match="no adapter_config.json there"):
        check_train_inputs(config)
    config = build_train_config("sft", data=data, base=base, out=tmp_path / "out")
    assert check_train_inputs(config) == ([GOOD], [])
    for bad, message in [("hf:/nowhere", "model path not found"), (f"{base}+{tmp_path}", "names an adapter"),
                         ("openai:gpt-4o-mini", "unsupported base")]:  # fmt: skip
        with pytest.raises(AloeError, match=message):
            check_train_inputs(build_train_config("sft", data=data, base=bad, out=tmp_path / "out"))


def test_one_target_modules_string_must_be_a_regular_expression():
    # peft reads a single string as a regular expression of whole module names.
    from pydantic import ValidationError

    from aloekit.training.train import LoraSettings

    assert LoraSettings(target_modules=r".*\.(q|v)_proj").target_modules == r".*\.(q|v)_proj"
    with pytest.raises(ValidationError, match="not a regular expression of module names"):
        LoraSettings(target_modules="q_proj(")
