"""The recipes' names without the recipes' imports: `focalserve train` lists them when the CLI
starts, and loading torch and open_clip for that made every `focalserve` command take 7 s."""

RECIPES = ("clip", "focallens", "fsc-clip")
