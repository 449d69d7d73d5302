import subprocess
import sys

import pytest

from mmeff.benchmark.complexity import PAPER, TIMM, complexity_table


@pytest.fixture(scope='module')
def table():
    return complexity_table(('l1', 'l3', 'l7'))


@pytest.mark.parametrize('arch', ['l1', 'l3', 'l7'])
def test_params_and_macs_match_paper_and_timm(table, arch):
    row = table[arch]
    assert row['params_m'] == pytest.approx(TIMM[arch]['params_m'], rel=5e-3)
    assert row['gmacs'] == pytest.approx(TIMM[arch]['gmacs'], rel=5e-3)
    # the paper rounds to one decimal
    assert row['params_m'] == pytest.approx(PAPER[arch]['params_m'], rel=1.5e-2)
    assert row['gmacs'] == pytest.approx(PAPER[arch]['gmacs'], rel=1.5e-2)


def test_analyze_tool(tmp_path, repo_root):
    out = tmp_path / 'complexity.json'
    res = subprocess.run([sys.executable, 'tools/analyze.py', '--archs', 'l1', '--out', str(out)],
                         cwd=repo_root, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert '| l1 | 12.29 | 1.30 |' in res.stdout
    assert out.exists()
