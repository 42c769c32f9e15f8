"""Article HTML in the shapes MediaWiki really serves, for the scraper's tests and the loopback
article server: the current skin (Vector 2022, MediaWiki 1.45) and the legacy one (Vector,
MediaWiki 1.33). Each page carries the chrome and non-prose parts of a real article (site notice,
indicators, short description, hatnote, empty paragraph, TemplateStyles, infobox, thumbnails,
citation markers, edit links, the table of contents where that skin puts it, reference list,
sections after References, navbox, authority control, print footer, categories, footer).

`EXPECTED_*` hold the exact text a reader sees of the fixed parts, one line per block."""

from __future__ import annotations

import html as _html

NBSP, LRM = "\u00a0", "\u200e"


def cite(n: int, modern: bool = True) -> str:
    inner = (
        f'<span class="cite-bracket">&#91;</span>{n}<span class="cite-bracket">&#93;</span>'
        if modern
        else f"&#91;{n}&#93;"
    )
    return f'<sup id="cite_ref-{n}" class="reference"><a href="#cite_note-{n}">{inner}</a></sup>'


# --------------------------------------------------------------------------- shared pieces

LEAD = (
    'A <b>light-emitting diode</b> (<b>LED</b>) is a <a href="/wiki/Semiconductor_device" '
    'title="Semiconductor device">semiconductor device</a> that emits light when '
    '<a href="/wiki/Electric_current" title="Electric current">current</a> flows through it.'
    "{c1} Water is H<sub>2</sub>O and <b>HTML</b>'s tags nest.{c2}"
)
EXPECTED_LEAD = (
    "A light-emitting diode (LED) is a semiconductor device that emits light when current "
    "flows through it. Water is H2O and HTML's tags nest."
)
# Infobox rows as (label, data) HTML: the cells must never fuse into one word.
INFOBOX_ROWS = [
    ("Type", '<a href="/wiki/Passivity_(engineering)">Passive</a>, optoelectronic'),
    ("Working" + NBSP + "principle", '<a href="/wiki/Electroluminescence">Electroluminescence</a>'),
    ("Invented", 'H. J. Round (1907){c}<br><a href="/wiki/Oleg_Losev">Oleg Losev</a> (1927)'),
    ("First production", "October&#8206; 1962"),
    ('<a href="/wiki/Pin_configuration">Pin configuration</a>', "Anode and cathode"),
]
EXPECTED_INFOBOX = [
    "Light-emitting diode",
    "Blue, green, and red LEDs in 5 mm diffused packages",
    "Type Passive, optoelectronic",
    "Working principle Electroluminescence",
    "Invented H. J. Round (1907)",
    "Oleg Losev (1927)",
    "First production October 1962",
    "Pin configuration Anode and cathode",
]
FIGURE_CAPTION = "Parts of a conventional LED. The flat bottom surfaces of the anvil and post"
SEE_ALSO = ["LED circuit", "LED lamp", "Laser diode"]
# Text that must never reach the tokenizer, whatever the skin.
JUNK = [
    "From Wikipedia",
    "Jump to",
    "redirects here",  # hatnote
    "Semiconductor light source",  # short description (display:none)
    "font-style",  # TemplateStyles CSS
    "mw.config",
    "RLCONF",
    "console.log",
    "[edit]",
    "edit source",
    "Contents",
    "[1]",
    "^",
    "Reference text",
    "References",
    "Further reading",
    "Extra reading after the references",
    "External links",
    "Electronic components",  # navbox
    "Authority control",
    "Retrieved from",
    "Categories",
    "Hidden categories",
    "last edited",
    "Page semi-protected",
    "This article needs additional citations",  # ambox
    "Main menu",
    "Navigation menu",
    "Enlarge",
    LRM,
    NBSP,
]


def _infobox(modern: bool) -> str:
    def row(label: str, data: str) -> str:
        cls = (' class="infobox-label"', ' class="infobox-data"') if modern else ("", "")
        return f'<tr><th scope="row"{cls[0]}>{label}</th><td{cls[1]}>{data}</td></tr>'

    img = (
        '<img alt="" src="//upload.wikimedia.org/RBG-LED.jpg" decoding="async" width="220" '
        'height="147" class="mw-file-element">'
    )
    caption = "Blue, green, and red LEDs in 5&#160;mm diffused packages"
    if modern:
        head = (
            '<tr><th colspan="2" class="infobox-above">Light-emitting diode</th></tr>'
            '<tr><td colspan="2" class="infobox-image"><span class="mw-default-size" '
            f'typeof="mw:File/Frameless"><a href="/wiki/File:RBG-LED.jpg" '
            f'class="mw-file-description">{img}</a></span><div class="infobox-caption">'
            f"{caption}</div></td></tr>"
        )
    else:
        head = (
            '<tr><th colspan="2" style="text-align:center;font-size:125%;font-weight:bold">'
            'Light-emitting diode</th></tr><tr><td colspan="2" style="text-align:center">'
            f'<a href="/wiki/File:RBG-LED.jpg" class="image">{img}</a><br/>{caption}</td></tr>'
        )
    rows = "".join(row(label, data.format(c=cite(2, modern))) for label, data in INFOBOX_ROWS)
    style = "" if not modern else ' style="width:22em"'
    return f'<table class="infobox"{style}><tbody>{head}{rows}</tbody></table>\n'


def _figure(modern: bool) -> str:
    img = '<img src="//upload.wikimedia.org/LED.svg" decoding="async" width="220" height="240">'
    caption = f'{FIGURE_CAPTION}{cite(3, modern)}<span style="display:none">hidden</span>'
    if modern:
        return (
            '<figure class="mw-default-size" typeof="mw:File/Thumb"><a href="/wiki/File:LED.svg"'
            f' class="mw-file-description">{img}</a><figcaption>{caption}</figcaption></figure>\n'
        )
    return (
        '<div class="thumb tright"><div class="thumbinner" style="width:222px;"><a '
        f'href="/wiki/File:LED.svg" class="image">{img}</a>  <div class="thumbcaption"><div '
        'class="magnify"><a href="/wiki/File:LED.svg" class="internal" title="Enlarge"></a>'
        f"</div>{caption}</div></div></div>\n"
    )


def _edit(section: int, modern: bool) -> str:
    link = (
        f'<a href="/w/index.php?title=Light-emitting_diode&amp;action=edit&amp;section={section}"'
        f' title="Edit section">{"<span>edit</span>" if modern else "edit"}</a>'
    )
    bracket = '<span class="mw-editsection-bracket">{}</span>'
    return f'<span class="mw-editsection">{bracket.format("[")}{link}{bracket.format("]")}</span>'


def heading(title: str, level: int, section: int, modern: bool) -> str:
    hid = title.replace(" ", "_")
    if modern:
        return (
            f'<div class="mw-heading mw-heading{level}"><h{level} id="{hid}">{title}</h{level}>'
            f"{_edit(section, True)}</div>\n"
        )
    return (
        f'<h{level}><span class="mw-headline" id="{hid}">{title}</span>'
        f"{_edit(section, False)}</h{level}>\n"
    )


def _toc(sections: list[tuple[str, list[str]]]) -> str:
    """The legacy skin's table of contents, inside the body after the lead."""
    items = "".join(
        f'<li class="toclevel-1 tocsection-{i}"><a href="#{t.replace(" ", "_")}"><span '
        f'class="tocnumber">{i}</span> <span class="toctext">{t}</span></a></li>\n'
        for i, t in enumerate([*(s for s, _ in sections), "See also", "References"], 1)
    )
    return (
        '<div id="toc" class="toc"><input type="checkbox" role="button" id="toctogglecheckbox" '
        'class="toctogglecheckbox" style="display:none" /><div class="toctitle" lang="en" '
        'dir="ltr"><h2>Contents</h2><span class="toctogglespan"><label class="toctogglelabel" '
        f'for="toctogglecheckbox"></label></span></div>\n<ul>\n{items}</ul>\n</div>\n'
    )


def _sections(sections: list[tuple[str, list[str]]], modern: bool) -> str:
    out = []
    for i, (title, paragraphs) in enumerate(sections, 1):
        out.append(heading(title, 2, i, modern))
        if i == 1:
            out.append(_figure(modern))
        for j, p in enumerate(paragraphs):
            out.append(f"<p>{_html.escape(p)}{cite(10 + j, modern)}\n</p>\n")
    n = len(sections)
    out.append(heading("See also", 2, n + 1, modern))
    out.append('<div class="div-col" style="column-width: 22em;">\n<ul>')
    out += [f'<li><a href="/wiki/{s.replace(" ", "_")}">{s}</a></li>\n' for s in SEE_ALSO]
    out.append("</ul></div>\n")
    return "".join(out)


def _after_references(n: int, modern: bool) -> str:
    refs = (
        '<div class="reflist reflist-columns references-column-width" style="column-width: '
        '30em;">\n<div class="mw-references-wrap mw-references-columns"><ol class="references">'
        '\n<li id="cite_note-1"><span class="mw-cite-backlink"><b><a href="#cite_ref-1">^</a>'
        '</b></span> <span class="reference-text">Reference text one.</span>\n</li>\n</ol></div>'
        "</div>\n"
    )
    return (
        heading("References", 2, n + 2, modern)
        + refs
        + heading("Further reading", 2, n + 3, modern)
        + "<ul><li>Extra reading after the references.</li></ul>\n"
        + heading("External links", 2, n + 4, modern)
        + '<div role="navigation" class="navbox" aria-labelledby="Electronic_components" '
        'style="padding:3px"><table class="nowraplinks"><tbody><tr><th scope="col" '
        'class="navbox-title" colspan="2">Electronic components</th></tr><tr><td>Diode '
        "Transistor</td></tr></tbody></table></div>\n"
        '<div role="navigation" class="navbox authority-control">Authority control databases'
        "</div>\n<!-- \nNewPP limit report\n-->\n"
    )


def _head(title: str, revision: int, modern: bool) -> str:
    config = (
        f'{{"wgPageName":"{title.replace(" ", "_")}","wgTitle":"{title}",'
        f'"wgCurRevisionId":{revision},"wgRevisionId":{revision},"wgArticleId":18290}}'
    )
    script = (
        f"<script>RLCONF={config};RLSTATE={{}};</script>"
        if modern
        else f"<script>(window.RLQ=window.RLQ||[]).push(function(){{mw.config.set({config});}});"
        "</script>"
    )
    return (
        f'<!DOCTYPE html>\n<html class="client-nojs" lang="en" dir="ltr">\n<head>\n'
        f'<meta charset="UTF-8">\n<title>{title} - Wikipedia</title>\n{script}\n'
        '<link rel="stylesheet" href="/w/load.php?lang=en&amp;modules=site.styles">\n'
        f'<meta name="generator" content="MediaWiki {"1.45.0-wmf.5" if modern else "1.33.0"}">'
        "\n</head>\n"
    )


def _lead_block(lead: str, modern: bool) -> str:
    short = (
        '<div class="shortdescription nomobile noexcerpt noprint searchaux" '
        'style="display:none">Semiconductor light source</div>\n'
    )
    return (
        (short if modern else "")
        + '<style data-mw-deduplicate="TemplateStyles:r1">.mw-parser-output .hatnote'
        "{font-style:italic}</style>"
        '<div role="note" class="hatnote navigation-not-searchable">"LED" redirects here. For '
        'other uses, see <a href="/wiki/LED_(disambiguation)">LED (disambiguation)</a>.</div>\n'
        '<table class="box-More_citations_needed plainlinks metadata ambox ambox-content" '
        'role="presentation"><tbody><tr><td class="mbox-text">This article needs additional '
        "citations for verification.</td></tr></tbody></table>\n"
        '<p class="mw-empty-elt">\n</p>\n'
        + _infobox(modern)
        + _figure(modern).replace(FIGURE_CAPTION, "An LED lamp in use")
        + f"<p>{lead.format(c1=cite(1, modern), c2=cite(4, modern))}\n</p>\n"
    )


def current_skin(
    sections: list[tuple[str, list[str]]], revision: int = 1234567, lead: str = LEAD
) -> str:
    """An article as Wikipedia serves it today (Vector 2022)."""
    title = "Light-emitting diode"
    return (
        _head(title, revision, True)
        + '<body class="skin-vector skin-vector-2022 mediawiki ltr action-view">\n'
        '<a class="mw-jump-link" href="#bodyContent">Jump to content</a>\n'
        '<div class="vector-header-container"><header class="vector-header mw-header">Main menu'
        " Search Donate Create account Log in</header></div>\n"
        '<div class="mw-page-container"><div class="vector-sitenotice-container"><div '
        'id="siteNotice"><!-- CentralNotice --></div></div>\n'
        '<nav id="mw-panel-toc" aria-label="Contents" class="mw-table-of-contents-container">'
        '<div id="vector-toc" class="vector-toc"><h2 class="vector-pinnable-header-label">'
        'Contents</h2><ul class="vector-toc-contents"><li class="vector-toc-list-item"><a '
        'href="#History"><div class="vector-toc-text"><span class="vector-toc-numb">1</span>'
        "<span>History</span></div></a></li></ul></div></nav>\n"
        '<div class="mw-content-container"><main id="content" class="mw-body">\n'
        '<header class="mw-body-header vector-page-titlebar"><h1 id="firstHeading" '
        f'class="firstHeading mw-first-heading"><span class="mw-page-title-main">{title}</span>'
        "</h1></header>\n"
        '<div id="bodyContent" class="vector-body"><div class="vector-body-before-content">'
        '<div class="mw-indicators"><div class="mw-indicator"><a href="/wiki/Wikipedia:'
        'Protection_policy#semi"><img alt="Page semi-protected" src="//x/lock.svg"></a>'
        '</div></div>\n<div id="siteSub" class="noprint">From Wikipedia, the free encyclopedia'
        '</div></div>\n<div id="contentSub"><div id="mw-content-subtitle"></div></div>\n'
        '<div id="mw-content-text" class="mw-body-content"><div class="mw-content-ltr '
        'mw-parser-output" lang="en" dir="ltr">'
        + _lead_block(lead, True)
        + '<meta property="mw:PageProp/toc">\n'
        + _sections(sections, True)
        + _after_references(len(sections), True)
        + '<script>console.log("inline script inside the body");</script>'
        '</div><noscript><img src="//en.wikipedia.org/wiki/Special:CentralAutoLogin/start" '
        'alt="" width="1" height="1"></noscript>\n<div class="printfooter" data-nosnippet="">'
        'Retrieved from "<a href="https://en.wikipedia.org/w/index.php?oldid=1">link</a>"</div>'
        '</div>\n<div id="catlinks" class="catlinks"><div id="mw-normal-catlinks">'
        '<a href="/wiki/Help:Category">Categories</a>: <ul><li>Light-emitting diodes</li></ul>'
        '</div><div id="mw-hidden-catlinks" class="mw-hidden-catlinks">Hidden categories: '
        "<ul><li>Articles with short description</li></ul></div></div>\n"
        "</div></main></div>\n"
        '<footer id="footer" class="mw-footer"><ul id="footer-info"><li '
        'id="footer-info-lastmod"> This page was last edited on 20 November 2025.</li></ul>'
        "</footer></div>\n</body>\n</html>\n"
    )


def legacy_skin(
    sections: list[tuple[str, list[str]]], revision: int = 871000000, lead: str = LEAD
) -> str:
    """An article as MediaWiki's legacy Vector skin served it (2018)."""
    title = "Light-emitting diode"
    return (
        _head(title, revision, False)
        + '<body class="mediawiki ltr sitedir-ltr skin-vector action-view">\t\t'
        '<div id="mw-page-base" class="noprint"></div>\n<div id="mw-head-base" '
        'class="noprint"></div>\n<div id="content" class="mw-body" role="main">\n'
        '<a id="top"></a>\n<div id="siteNotice" class="mw-body-content"><!-- CentralNotice -->'
        '</div>\n<div class="mw-indicators mw-body-content">\n</div>\n'
        f'<h1 id="firstHeading" class="firstHeading" lang="en">{title}</h1>'
        '\t\t\t<div id="bodyContent" class="mw-body-content">\n<div id="siteSub" '
        'class="noprint">From Wikipedia, the free encyclopedia</div>\t\t\t\t<div '
        'id="contentSub"></div>\n<div id="jump-to-nav"></div>\t\t\t\t<a class="mw-jump-link" '
        'href="#mw-head">Jump to navigation</a>\n<a class="mw-jump-link" href="#p-search">Jump to'
        ' search</a>\n<div id="mw-content-text" lang="en" dir="ltr" class="mw-content-ltr">'
        '<div class="mw-parser-output">'
        + _lead_block(lead, False)
        + _toc(sections)
        + "\n"
        + _sections(sections, False)
        + _after_references(len(sections), False)
        + '</div><noscript><img src="//en.wikipedia.org/wiki/Special:CentralAutoLogin/start" '
        'alt="" title="" width="1" height="1" /></noscript></div>\t\t\t\t\t<div '
        'class="printfooter">\n\t\t\t\t\t\tRetrieved from "<a dir="ltr" href="https://en.'
        'wikipedia.org/w/index.php?oldid=1">link</a>"\t\t\t\t\t</div>\n<div id="catlinks" '
        'class="catlinks" data-mw="interface"><div id="mw-normal-catlinks" '
        'class="mw-normal-catlinks"><a href="/wiki/Help:Category">Categories</a>: <ul><li>'
        'Light-emitting diodes</li></ul></div><div id="mw-hidden-catlinks" class="mw-hidden-'
        'catlinks mw-hidden-cats-hidden">Hidden categories: <ul><li>CS1 errors</li></ul></div>'
        '</div>\n<div class="visualClear"></div>\n</div>\n</div>\n<div id="mw-navigation">\n'
        '<h2>Navigation menu</h2>\n<div id="mw-head">Personal tools Not logged in Talk</div>\n'
        '<div id="mw-panel">Main page Contents Featured content</div>\n</div>\n<div '
        'id="footer" role="contentinfo"><ul id="footer-info"><li id="footer-info-lastmod"> '
        "This page was last edited on 1 December 2018, at 10:00.</li></ul></div>\n"
        "</body>\n</html>\n"
    )


def expected_text(sections: list[tuple[str, list[str]]]) -> str:
    """What a reader sees of either skin's page, line by line."""
    lines = [EXPECTED_LEAD, *EXPECTED_INFOBOX, "An LED lamp in use"]
    for i, (title, paragraphs) in enumerate(sections, 1):
        lines.append(title)
        if i == 1:
            lines.append(FIGURE_CAPTION)
        lines += [" ".join(p.split()) for p in paragraphs]
    return "\n".join([*lines, "See also", *SEE_ALSO])
