"""The package as installed: every module imports on its own, metadata comes from settings.ini, the kernel is registered."""
import configparser, json, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(p.stem for p in (ROOT / 'portrait_nb').glob('*.py') if not p.stem.startswith('_'))

def settings():
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT / 'settings.ini')
    return cfg['DEFAULT']

@pytest.mark.parametrize('module', MODULES)
def test_module_imports_in_a_fresh_interpreter(module):
    "Exported code must not depend on names defined only in a notebook (STYLE.md, habit 4)."
    r = subprocess.run([sys.executable, '-c', f'import portrait_nb.{module}'], capture_output=True, text=True, cwd='/')
    assert r.returncode == 0, r.stderr

def test_version_and_requirements_come_from_settings():
    import portrait_nb
    s = settings()
    assert portrait_nb.__version__ == s['version']
    reqs = s['requirements'].split()
    assert 'torchvision' not in ' '.join(reqs + s['dev_requirements'].split())
    assert any(r.startswith('torch>=') for r in reqs), 'torch must stay a range so GPU users keep their CUDA build'
    assert 'nbdev==2.4.14' in s['dev_requirements'].split()

def test_nbdev_settings_keep_papermill_tags_and_flags():
    s = settings()
    assert s['allowed_cell_metadata_keys'].split() == ['tags']
    assert set(s['tst_flags'].split()) == {'notest', 'slow', 'gpu'}

def test_jupyter_kernel_is_registered_for_this_environment():
    from jupyter_client.kernelspec import KernelSpecManager
    specs = KernelSpecManager().find_kernel_specs()
    assert 'portrait_nb' in specs, "kernel 'portrait_nb' missing: run `make setup`"
    spec = KernelSpecManager().get_kernel_spec('portrait_nb')
    assert Path(spec.argv[0]).resolve() == Path(sys.executable).resolve()

def test_every_library_module_has_a_notebook():
    exported = set()
    for nb in (ROOT / 'nbs').glob('*.ipynb'):
        for cell in json.loads(nb.read_text())['cells']:
            for line in ''.join(cell['source']).splitlines():
                if line.startswith('#| default_exp'): exported.add(line.split()[-1])
    assert set(MODULES) <= exported, set(MODULES) - exported
