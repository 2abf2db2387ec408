import json

from aloekit.testing import StubOpenAIServer, role_aware_reply


def test_tree_html_export_and_view_refusals(run_aloe, tmp_path):
    with StubOpenAIServer(respond=role_aware_reply) as server:
        run = json.loads(run_aloe("--json", "simulate", "--conversations", "1", "--turns", "2", "--role",
                                  f"all={server.spec()}").stdout)["run_id"]  # fmt: skip
    proc = run_aloe("trees", "export", f"{run}-0000", "--format", "html", "--out", "tree.html")
    assert proc.returncode == 0, proc.stderr
    html = (tmp_path / "tree.html").read_text()
    assert html.startswith("<!doctype html>") and html.count('class="turn"') == 2 and "Content-Security-Policy" in html
    missing = run_aloe("trees", "export", "nope", "--format", "html")
    assert missing.returncode == 1 and "no conversation 'nope'" in missing.stderr
    remote = run_aloe("view", "--host", "0.0.0.0", "--port", "0")
    assert remote.returncode == 1 and remote.stderr.startswith("error: refusing to serve on 0.0.0.0")
    nodb = run_aloe("view", "--db", "other.db", "--port", "0")
    assert nodb.returncode == 1 and nodb.stderr == "error: no database at other.db\n"
