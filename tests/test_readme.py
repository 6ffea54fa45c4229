"""The README's two commands are the ones that CI and users run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands():
    """The commands of the README's first code block, comments stripped."""
    block = ROOT.joinpath("README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_opens_with_install_train_and_test_commands():
    install_and_train, install_and_test = readme_commands()
    assert install_and_train.endswith("python -m tinyconv.train")
    assert '".[test]"' in install_and_test and install_and_test.endswith("python -m pytest")


def test_ci_runs_the_readme_test_command():
    ci_lines = ROOT.joinpath(".ci", "run").read_text().splitlines()
    assert readme_commands()[1] in ci_lines


def test_readme_names_every_flag_that_overrides_a_recipe():
    from tinyconv.train import RECIPES

    text = ROOT.joinpath("README.md").read_text()
    listed = text.split("Flags override any recipe (", 1)[1].split(")", 1)[0]
    flags = set(re.findall(r"--[a-z-]+", listed))
    # the settings every recipe sets (default and best set a few more besides)
    shared = set.intersection(*(set(recipe) for recipe in RECIPES.values()))
    assert flags == {f"--{key.replace('_', '-')}" for key in shared} | {"--no-flip"}


def test_the_readme_spec_file_builds_and_trains(tmp_path):
    # the README's example spec is a network `python -m tinyconv.train --arch FILE` takes
    import json

    from tinyconv import archs, nn

    block = ROOT.joinpath("README.md").read_text().split("```json\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "my_net.json"
    path.write_text(block)
    model = nn.Sequential.from_spec(archs.find_spec(str(path)))
    assert [layer.spec()["kind"] for layer in model.layers] == [
        layer["kind"] for layer in json.loads(block)["layers"]]
    assert model.input_shape == (1, 32, 32) and model.output_shape == (10,)
    from tinyconv import train

    assert train.main(["--arch", str(path), "--epochs", "1", "--limit-train", "128",
                       "--limit-test", "64", "--quiet", "--run-dir", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "best.npz").exists()
