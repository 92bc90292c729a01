"""The offline documentation site (`python -m portrait_nb.site`, run by `make docs`) opened in headless Chromium, as a reader opens it:
every page loads without a JavaScript error and without a request leaving the machine, has its title and the sidebar, and shows every
figure of its notebook; a screenshot of the landing page is saved to results/site/index.png.

Chromium is Debian's `chromium` package (`make browser`, which `make test` runs, installs it) driven by Playwright for Python; Playwright's
own browser download is never used."""
import functools, http.server, json, os, re, subprocess, sys, threading
from pathlib import Path
import pytest
from portrait_nb.site import read_sidebar, sidebar_pages, page_names, SIDEBAR_FILE

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
CHROMIUM = Path('/usr/bin/chromium')
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync']
SCREENSHOT = ROOT / 'results' / 'site' / 'index.png'
FIGURE_MIMES = ('image/png', 'image/jpeg', 'image/gif', 'image/svg+xml', 'application/vnd.plotly.v1+json')
HIDDEN = re.compile(r'^#\|\s*(hide|export|exporti|include:\s*false|output:\s*false)\s*$', re.M)   # cells whose outputs no page shows
GROUPS = read_sidebar(NBS / SIDEBAR_FILE)
PAGES = sidebar_pages(GROUPS)
NAMES = page_names(GROUPS)


def source_facts(nb):
    "Title (the first H1) and number of figure outputs of a notebook, read from its file without nbdev or nbconvert."
    cells = json.loads((NBS / nb).read_text())['cells']
    title = next(m.group(1) for c in cells if c['cell_type'] == 'markdown' and (m := re.search(r'^#\s+(.+?)\s*$', ''.join(c['source']), re.M)))
    figures = sum(any(m in o.get('data', {}) for m in FIGURE_MIMES) for c in cells if c['cell_type'] == 'code'
                  and not HIDDEN.search(''.join(c['source'])) for o in c.get('outputs', []))
    return title, figures


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "The full site, built by the command line as `make docs` builds it."
    out = tmp_path_factory.mktemp('site') / '_site'
    r = subprocess.run([sys.executable, '-m', 'portrait_nb.site', '--out', str(out), '--quiet'], capture_output=True, text=True, cwd=ROOT,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope='module')
def server(site):
    "The site served over HTTP on localhost, as a reader's browser would get it."
    handler = functools.partial(type('Quiet', (http.server.SimpleHTTPRequestHandler,), {'log_message': lambda *a: None}), directory=str(site))
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{httpd.server_port}'
    httpd.shutdown()


@pytest.fixture(scope='module')
def browser():
    "Headless Chromium from Debian's package, through Playwright; skipped with the reason when either is missing (`make test` installs them where it can)."
    if not CHROMIUM.exists():
        pytest.skip(f'{CHROMIUM} not found: `make browser` installs it on Debian (apt-get install chromium, as root); elsewhere install Chromium there to run the site test')
    try: from playwright.sync_api import sync_playwright
    except ImportError: pytest.fail('playwright is not installed: pip install -e ".[dev]" (settings.ini dev_requirements)')
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser, server, name, viewport=(1280, 900)):
    "Load a page; return it with the JavaScript errors and the requests it made."
    page = browser.new_page(viewport=dict(width=viewport[0], height=viewport[1]))
    errors, requests = [], []
    page.on('pageerror', lambda e: errors.append(f'page error: {e}'))
    page.on('console', lambda m: m.type == 'error' and errors.append(f'console error: {m.text}'))
    page.on('requestfailed', lambda r: errors.append(f'request failed: {r.url}'))
    page.on('request', lambda r: requests.append(r.url))
    page.goto(f'{server}/{name}', wait_until='load')
    try: page.wait_for_function("[...document.querySelectorAll('.plotly-graph-div')].every(d => d.querySelector('.main-svg'))", timeout=20_000)
    except Exception: errors.append('plotly figures not drawn within 20 s (is plotly.min.js loaded?)')
    return page, errors, requests


def test_the_sidebar_lists_every_notebook_in_reading_order():
    notebooks = {p.name for p in NBS.glob('*.ipynb') if not p.name.startswith('_')}
    assert notebooks <= set(PAGES), f'notebooks missing from nbs/{SIDEBAR_FILE}: {sorted(notebooks - set(PAGES))}'
    assert PAGES[0] == 'index.ipynb' and NAMES['index.ipynb'] == 'index.html'
    libs = [nb for nb in PAGES if re.match(r'\d', nb)]
    assert libs == sorted(libs)                                    # library chapters in their numbered order


def test_the_build_writes_every_page_and_fetches_nothing(site):
    assert sorted(p.name for p in site.glob('*.html')) == sorted(NAMES.values())
    assert (site / 'plotly.min.js').stat().st_size > 1_000_000 and (site / 'site.css').exists()
    remote = re.compile(r'<(?:script|link|img|iframe|video|audio|source)\b[^>]*\b(?:src|href)\s*=\s*["\']?(?:https?:)?//', re.I)
    for p in site.glob('*.html'): assert not remote.search(p.read_text()), p.name


def test_links_between_pages_land_on_a_page_and_an_anchor(site):
    pages = {p.name: p.read_text() for p in site.glob('*.html')}
    ids = {name: set(re.findall(r'\bid="([^"]+)"', html)) for name, html in pages.items()}
    broken = []
    for name, html in pages.items():
        for href in re.findall(r'<a\b[^>]*\bhref="([^"]+)"', html):
            if re.match(r'[a-z]+:', href): continue                # GitHub source links, data: URLs
            target, _, anchor = href.partition('#')
            target = target or name
            if anchor.startswith('_'): anchor = ''                  # nbdev links private helpers too; they have no show_doc heading (nor in Quarto)
            if target not in pages or (anchor and anchor not in ids[target]): broken.append(f'{name} -> {href}')
    assert not broken, broken[:20]


@pytest.mark.parametrize('nb', PAGES)
def test_page_loads_without_errors_and_shows_its_figures(browser, server, nb):
    title, n_figures = source_facts(nb)
    page, errors, requests = open_page(browser, server, NAMES[nb])
    try:
        assert not errors, errors
        assert all(u.startswith(server) or u.startswith('data:') for u in requests), [u for u in requests if not u.startswith(server)][:5]
        assert page.title() == title and page.inner_text('main h1.title') == title
        assert page.locator('nav.site-sidebar a').count() == len(PAGES)
        assert page.get_attribute('nav.site-sidebar a[aria-current="page"]', 'href') == NAMES[nb]
        images = page.evaluate("[...document.querySelectorAll('main img')].filter(i => i.complete && i.naturalWidth > 0).length")
        plots = page.evaluate("[...document.querySelectorAll('main .plotly-graph-div')].filter(d => d.querySelector('.main-svg')).length")
        assert images + plots >= n_figures, (images, plots, n_figures)
    finally:
        page.close()


def test_landing_page_screenshot(browser, server):
    page, errors, _ = open_page(browser, server, 'index.html', viewport=(1400, 1000))
    try:
        page.wait_for_timeout(500)                                 # plotly's transitions settle
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        tmp = SCREENSHOT.with_name(f'.{SCREENSHOT.name}.{os.getpid()}.png')
        page.screenshot(path=str(tmp))
        tmp.replace(SCREENSHOT)
    finally:
        page.close()
    assert not errors, errors
    import matplotlib.pyplot as plt
    img = plt.imread(SCREENSHOT)                                   # (H, W, 4) in [0, 1]
    assert img.shape[:2] == (1000, 1400) and img[..., :3].std() > 0.1   # a page, not a blank
