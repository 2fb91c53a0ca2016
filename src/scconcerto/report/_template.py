"""The report's HTML (a Jinja2 template, kept in Python so it ships with the package): no scripts, no external files.

Numbers go through the ``number``, ``percent`` and ``count`` filters, which show a missing value as "–".
"""

TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
 body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0; color: #222; background: #fafafa; }
 header { background: #1f3a5f; color: white; padding: 18px 32px; }
 header h1 { margin: 0 0 4px 0; font-size: 24px; }
 header p { margin: 0; opacity: 0.85; font-size: 13px; }
 main { max-width: 1200px; margin: 0 auto; padding: 8px 32px 40px 32px; }
 section { background: white; border: 1px solid #e3e3e3; border-radius: 6px; padding: 12px 20px; margin: 18px 0; }
 h2 { font-size: 19px; border-bottom: 2px solid #1f3a5f; padding-bottom: 4px; }
 h3 { font-size: 16px; margin-top: 22px; }
 .cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 8px 0; }
 .card { flex: 1 1 150px; background: #eef3f9; border-radius: 6px; padding: 10px 14px; }
 .card .value { font-size: 22px; font-weight: 600; }
 .card .name { font-size: 12px; color: #555; }
 table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
 th, td { border-bottom: 1px solid #e3e3e3; padding: 4px 10px; text-align: left; }
 th { background: #f3f5f8; }
 td.num, table.data td { font-variant-numeric: tabular-nums; }
 figure { margin: 12px 0; }
 figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
 figure.natural { overflow-x: auto; }
 figure.natural img { max-width: none; }
 figcaption { font-size: 12px; color: #555; max-width: 900px; }
 .grid { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
 .grid > figure, .grid > div { flex: 1 1 460px; min-width: 0; }
 .grid > figure.wide { flex: 1 1 100%; }
 .grid > figure.umap { flex: 1 1 380px; max-width: 500px; }
 .tablewrap { overflow-x: auto; }
 .tablewrap table.data { font-size: 12px; }
 .tablewrap table.data th { vertical-align: bottom; }
 .tablewrap table.data th, .tablewrap table.data td { padding: 3px 6px; }
 .note { background: #f3f7fb; border-left: 4px solid #1f3a5f; padding: 6px 12px; font-size: 13px; }
 .warn { background: #fdecea; border-left: 4px solid #d93025; padding: 6px 12px; font-size: 13px; }
 .download { background: #eef7ee; border-left: 4px solid #2e7d32; padding: 8px 12px; font-size: 14px; }
 details { background: white; border: 1px solid #e3e3e3; border-radius: 6px; padding: 10px 20px; margin: 18px 0; }
 summary { font-size: 17px; font-weight: 600; cursor: pointer; }
 code { background: #f3f3f3; padding: 1px 4px; border-radius: 3px; }
</style>
</head>
<body>
<header>
 <h1>{{ title }}</h1>
 <p>{{ "{:,}".format(query.cells) }} cells of {{ query_name }} {{ "annotated with" if annotated else "mapped onto" }} {{ model_name }} &middot; generated {{ generated }} by scConcerto {{ versions.get('scconcerto', '') }}</p>
</header>
<main>
{% if overlap and overlap.overlap < 0.8 %}<p class="warn">Only {{ overlap.overlap|percent }} of the reference genes are in the query: missing genes count as not expressed, which can bias the labels. Check that gene names are of the same kind (symbols vs Ensembl ids, species).</p>{% endif %}
{% if download %}<p class="download" id="download"><a href="{{ download.href }}" download="{{ download.name }}">Download the predictions ({{ download.name }}, {{ download.cells|count }} cells, {{ download.kilobytes|count }} kB)</a>: one row per cell, columns {{ download.columns|join(", ") }}.</p>{% endif %}

{% for key, a in answers.items() %}
<section id="answers-{{ loop.index }}" class="answers">
<h2>Predicted {{ key }}</h2>
<div class="cards">
 <div class="card"><div class="value">{{ a.summary.types|count }}</div><div class="name">types predicted</div></div>
 <div class="card"><div class="value">{{ a.summary.mean_confidence|number(2) }}</div><div class="name">mean confidence</div></div>
 <div class="card"><div class="value">{{ a.summary.unknown_fraction|percent }}</div><div class="name">unknown ({{ a.summary.unknown|count }} cells)</div></div>
 {% if a.summary.scores %}<div class="card"><div class="value">{{ a.summary.scores.accuracy|number }}</div><div class="name">accuracy vs <code>{{ a.summary.given_key }}</code></div></div>{% endif %}
</div>
<div class="grid">
{% if a.umap %}<figure class="umap"><img src="data:image/png;base64,{{ a.umap.png }}" alt="{{ a.umap.title }}"><figcaption><b>{{ a.umap.title }}.</b> {{ a.umap.caption }}</figcaption></figure>{% endif %}
<div class="tablewrap">
<h3>Per predicted type</h3>
{{ a.table_html }}
<p class="note">Cells flagged unknown stay counted under the type they were given, and in the unknown columns.</p>
</div>
</div>
{% if a.boxes %}<figure class="wide"><img src="data:image/png;base64,{{ a.boxes.png }}" alt="{{ a.boxes.title }}"><figcaption><b>{{ a.boxes.title }}.</b> {{ a.boxes.caption }}</figcaption></figure>{% endif %}
<div class="grid">
<div class="note" id="unknown-note-{{ loop.index }}">
{% set cal = a.unknown.calibration %}
<p><b>What "unknown" means.</b>
{% if a.unknown.known_prob %}A cell is flagged unknown when the probability that its type is one the reference has (<code>obs['{{ a.known_column }}']</code>) is below {% if a.unknown.threshold is not none %}{{ a.unknown.threshold|number(2) }}{% else %}the threshold{% endif %}: its type is probably not in the reference (a new type, a state the reference lacks, a doublet or a damaged cell).
{% else %}A cell is flagged unknown when the classifier's {{ a.score_name }} (<code>obs['{{ a.known_column }}']</code>) is below {% if a.unknown.threshold is not none %}{{ a.unknown.threshold|number(2) }}{% else %}its threshold{% endif %}: the cell is unlike the types the classifier was trained on.
{% endif %}
{% if cal %}{% if cal.is_default %}This is the model's default threshold: {{ cal.rate|percent(0) }} of the{% if cal.held_out_cells is not none %} {{ cal.held_out_cells|count }}{% endif %} {{ cal.held_out }} (all of types it has) fall below it. So about {{ cal.rate|percent(0) }} of the cells of seen types are expected to be flagged too.
{% else %}This threshold was set when mapping; the model's default ({% for d in cal.default %}{{ d|number(2) }}{% if not loop.last %} or {% endif %}{% endfor %}) flags {{ cal.rate|percent(0) }} of {{ cal.held_out }} of seen types.
{% endif %}{% endif %}
{% if reject %}Its predicted label is written as "unknown".{% else %}It keeps its most likely label in <code>obs['{{ key }}_pred']</code>; <code>obs['{{ key }}_unknown']</code> flags it.{% endif %}
{% if a.unknown.flagged is not none %}Here {{ a.unknown.flagged|count }} cells ({{ a.unknown.fraction|percent }}) are flagged.{% endif %}
{% if a.unknown.seen %}Of the {{ a.unknown.seen.cells|count }} cells whose given label (<code>{{ a.given }}</code>) is a type the reference has, {{ a.unknown.seen.unknown|count }} ({{ a.unknown.seen.rate|percent }}) are flagged{% if cal and cal.is_default %} (calibrated rate on seen types: {{ cal.rate|percent(0) }}){% endif %}.{% endif %}
{% if a.unknown.unseen %}Of the {{ a.unknown.unseen.cells|count }} cells of types the reference does not have ({% for t, n in a.unknown.unseen.types.items() %}{{ t }}: {{ n|count }}{% if not loop.last %}, {% endif %}{% endfor %}), {{ a.unknown.unseen.unknown|count }} ({{ a.unknown.unseen.rate|percent }}) are flagged.{% endif %}
{% if a.unknown.matched is false %}No given label in <code>{{ a.given }}</code> is a label of the reference, so the rate on types it has is not computed.{% endif %}
</p>
<p><b>What "confidence" means.</b> <code>obs['{{ key }}_confidence']</code> is {% if annotated %}the classifier's calibrated probability that the predicted label is right{% else %}the probability that the predicted label is right{% if a.unknown.known_prob %} and that the type is one the reference has{% endif %}{% endif %}{% if cal and cal.held_out_accuracy is not none %} (the labels of {{ cal.accuracy_of }} were right {{ cal.held_out_accuracy|percent }} of the time){% endif %}. {% if not annotated %}It is low when the cell's nearest reference cells disagree. {% endif %}A type with few {{ "training" if annotated else "reference" }} cells has little evidence for it, so its cells often get a low confidence even when their label is right: a low confidence says the evidence is thin, not that the label is wrong.
{% if a.low %}Types with a mean confidence below 0.5 here: {% for r in a.low %}{{ r.type }} ({{ r.cells|count }} cells{% if r.reference_cells is not none %}, {{ r.reference_cells|count }} in the reference{% endif %}, mean confidence {{ r.mean_confidence|number(2) }}{% if r.agrees is not none %}, {{ r.agrees|percent(0) }} agree with the given label{% endif %}){% if not loop.last %}; {% endif %}{% endfor %}.{% endif %}
</p>
</div>
{% if a.histogram %}<figure><img src="data:image/png;base64,{{ a.histogram.png }}" alt="{{ a.histogram.title }}"><figcaption><b>{{ a.histogram.title }}.</b> {{ a.histogram.caption }}</figcaption></figure>{% endif %}
</div>
</section>
{% endfor %}

{% if hierarchy %}
<section id="hierarchy">
<h2>Hierarchy</h2>
<p>Mapped level by level, coarse to fine: each cell's finer label is chosen among those of its coarser predicted label.</p>
{% for h in hierarchy %}
<h3>{{ h.coarse }} &rarr; {{ h.fine }}</h3>
<div class="grid">
<div>{{ h.table_html }}</div>
{% if h.figure %}<figure class="wide"><img src="data:image/png;base64,{{ h.figure.png }}" alt="{{ h.figure.title }}"><figcaption><b>{{ h.figure.title }}.</b> {{ h.figure.caption }}</figcaption></figure>{% endif %}
</div>
{% endfor %}
</section>
{% endif %}

{% for key, c in checks.items() %}
<section id="checks-{{ loop.index }}">
<h2>{{ key }} against the given labels</h2>
<p>Against <code>{{ c.summary.given_key }}</code> ({{ c.summary.labeled_cells|count }} labelled cells): accuracy {{ c.summary.scores.accuracy|number }}, macro F1 {{ c.summary.scores.macro_f1|number }}, median F1 {{ c.summary.scores.median_f1|number }}{% if c.summary.accuracy_of_known is not none %}; accuracy of the cells not flagged unknown {{ c.summary.accuracy_of_known|number }}{% endif %}.</p>
{% for f in c.figures %}<figure class="{{ 'natural' if f.natural else 'wide' if f.wide else '' }}"><img src="data:image/png;base64,{{ f.png }}" alt="{{ f.title }}"><figcaption><b>{{ f.title }}.</b> {{ f.caption }}</figcaption></figure>
{% endfor %}
</section>
{% endfor %}

{% if placement %}
<section id="placement">
<h2>The query on the reference</h2>
<div class="grid">
{% for f in placement %}<figure{% if f.wide %} class="wide"{% endif %}><img src="data:image/png;base64,{{ f.png }}" alt="{{ f.title }}"><figcaption><b>{{ f.title }}.</b> {{ f.caption }}</figcaption></figure>
{% endfor %}</div>
</section>
{% endif %}

<section id="overview">
<h2>What was {{ "annotated" if annotated else "mapped onto what" }}</h2>
{% if coords_note %}<p class="note">{{ coords_note }}</p>{% endif %}
<div class="grid">
<div>
<h3>Query</h3>
<table id="query-facts">
 <tr><th>file</th><td>{{ query_name }}</td></tr>
 <tr><th>cells</th><td class="num">{{ query.cells|count }}</td></tr>
 <tr><th>genes</th><td class="num">{{ query.genes|count }}</td></tr>
 {% if query.sources %}<tr><th>sources (<code>{{ query.source_key }}</code>)</th><td>{% for k, n in query.sources.items() %}{{ k }}: {{ n|count }}{% if not loop.last %}<br>{% endif %}{% endfor %}</td></tr>{% endif %}
 {% if overlap %}<tr><th>reference genes found in the query</th><td class="num">{{ overlap.n_shared|count }} of {{ overlap.n_vocab|count }} ({{ overlap.overlap|percent }})</td></tr>
 <tr><th>query genes not in the reference (not used)</th><td class="num">{{ (overlap.n_dataset - overlap.n_shared)|count }}</td></tr>{% endif %}
</table>
{% if overlap and not overlap.recorded %}<p class="note">Gene overlap counted here from gene names; the file does not record the one used.</p>{% endif %}
</div>
<div>
<h3>Reference</h3>
<table id="reference-facts">
 <tr><th>model</th><td>{{ model_name }}</td></tr>
 <tr><th>cells</th><td class="num">{{ reference.cells|count }}</td></tr>
 <tr><th>genes in the vocabulary</th><td class="num">{{ reference.genes|count }}{% if reference.hvg %} (highly variable){% endif %}</td></tr>
 <tr><th>input values</th><td>{{ reference.input }}</td></tr>
 {% if reference.proteins %}<tr><th>proteins</th><td>{{ reference.proteins|join(", ") }}</td></tr>{% endif %}
 <tr><th>label keys</th><td>{% for k, n in reference.labels.items() %}{{ k }} ({{ n }} labels){% if not loop.last %}, {% endif %}{% else %}none{% endfor %}</td></tr>
 {% if reference.epochs %}<tr><th>training</th><td>{{ reference.epochs }} epochs{% if reference.final_loss is not none %}, loss {{ reference.first_loss|number }} &rarr; {{ reference.final_loss|number }}{% endif %}</td></tr>{% endif %}
 {% if reference.sources %}<tr><th>sources (<code>{{ reference.batch_key }}</code>)</th><td>{% for k, n in reference.sources.items() %}{{ k }}: {{ n|count }}{% if not loop.last %}<br>{% endif %}{% endfor %}</td></tr>{% endif %}
</table>
</div>
</div>
</section>

{% if protein %}
<section id="protein">
<h2>Imputed proteins</h2>
{% if protein.figure %}<figure><img src="data:image/png;base64,{{ protein.figure.png }}" alt="{{ protein.figure.title }}"><figcaption><b>{{ protein.figure.title }}.</b> {{ protein.figure.caption }}</figcaption></figure>{% endif %}
{{ protein.table_html }}
</section>
{% endif %}

{% if training %}
<section id="training">
<h2>Reference training</h2>
<figure><img src="data:image/png;base64,{{ training.png }}" alt="{{ training.title }}"><figcaption><b>{{ training.title }}.</b> {{ training.caption }}</figcaption></figure>
</section>
{% endif %}

{% if notes %}
<section id="notes">
<h2>Not shown</h2>
<ul>{% for n in notes %}<li>{{ n }}</li>{% endfor %}</ul>
</section>
{% endif %}

<details id="run">
<summary>Timings, parameters and versions</summary>
<div class="grid">
<div><h3>Timings</h3><table id="timings">{% for k, v in timings.items() %}<tr><th>{{ k }}</th><td class="num">{{ v|number(2) }} s</td></tr>{% endfor %}</table></div>
<div><h3>{{ "Annotation" if annotated else "Mapping" }} parameters</h3>{% if parameters %}<table id="parameters">{% for k, v in parameters.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>{% else %}<p class="note">The file records no parameters.</p>{% endif %}</div>
<div><h3>Versions</h3><table id="versions">{% for k, v in versions.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table></div>
</div>
</details>
</main>
</body>
</html>
"""
