"""The report's HTML (a Jinja2 template, kept in Python so it ships with the package): no scripts, no external files."""

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
 .cards { display: flex; flex-wrap: wrap; gap: 12px; }
 .card { flex: 1 1 150px; background: #eef3f9; border-radius: 6px; padding: 10px 14px; }
 .card .value { font-size: 22px; font-weight: 600; }
 .card .name { font-size: 12px; color: #555; }
 table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
 th, td { border-bottom: 1px solid #e3e3e3; padding: 4px 10px; text-align: left; }
 th { background: #f3f5f8; }
 td.num { text-align: right; font-variant-numeric: tabular-nums; }
 figure { margin: 12px 0; }
 figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
 figcaption { font-size: 12px; color: #555; max-width: 900px; }
 .grid { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
 .grid figure { flex: 1 1 460px; }
 .grid figure.wide { flex: 1 1 100%; }
 .note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 6px 12px; font-size: 13px; }
 .warn { background: #fdecea; border-left: 4px solid #d93025; padding: 6px 12px; font-size: 13px; }
 code { background: #f3f3f3; padding: 1px 4px; border-radius: 3px; }
</style>
</head>
<body>
<header>
 <h1>{{ title }}</h1>
 <p>{{ query_name }} mapped onto {{ model_name }} &middot; generated {{ generated }} by scConcerto {{ versions.get('scconcerto', '') }}</p>
</header>
<main>

<section id="overview">
<h2>What was mapped onto what</h2>
<p>{{ "{:,}".format(query.cells) }} query cells{% if query.sources %} from {{ query.sources|length }} source(s){% endif %}
 were placed onto a reference of {{ "{:,}".format(reference.cells or 0) }} cells
 ({{ reference.sources|length if reference.sources else 1 }} source(s), {{ "{:,}".format(reference.genes) }} genes{% if reference.proteins %}, {{ reference.proteins|length }} proteins{% endif %}).</p>
<div class="cards">
 <div class="card"><div class="value">{{ "{:,}".format(query.cells) }}</div><div class="name">query cells</div></div>
 <div class="card"><div class="value">{{ "{:,}".format(reference.cells or 0) }}</div><div class="name">reference cells</div></div>
 {% if overlap %}<div class="card"><div class="value">{{ "%.1f"|format(100 * overlap.overlap) }}%</div><div class="name">of the reference genes found in the query</div></div>{% endif %}
 {% for key, s in labels.items() %}
 {% if s.summary.scores %}<div class="card"><div class="value">{{ "%.3f"|format(s.summary.scores.accuracy) }}</div><div class="name">{{ key }} accuracy vs given labels</div></div>{% endif %}
 <div class="card"><div class="value">{{ "%.1f"|format(100 * s.summary.unknown_fraction) }}%</div><div class="name">{{ key }}: unknown cells</div></div>
 {% endfor %}
</div>
<div class="grid">
<div>
<h3>Reference</h3>
<table>
 <tr><th>model</th><td>{{ model_name }}</td></tr>
 <tr><th>cells</th><td class="num">{{ "{:,}".format(reference.cells or 0) }}</td></tr>
 <tr><th>genes in the vocabulary</th><td class="num">{{ "{:,}".format(reference.genes) }}{% if reference.hvg %} (HVG){% endif %}</td></tr>
 <tr><th>input values</th><td>{{ reference.input }}</td></tr>
 {% if reference.proteins %}<tr><th>proteins</th><td>{{ reference.proteins|join(", ") }}</td></tr>{% endif %}
 <tr><th>label keys</th><td>{% for k, n in reference.labels.items() %}{{ k }} ({{ n }} labels){% if not loop.last %}, {% endif %}{% else %}none{% endfor %}</td></tr>
 {% if reference.epochs %}<tr><th>training</th><td>{{ reference.epochs }} epochs{% if reference.final_loss is not none %}, loss {{ "%.3f"|format(reference.first_loss) }} &rarr; {{ "%.3f"|format(reference.final_loss) }}{% endif %}</td></tr>{% endif %}
 {% if reference.sources %}<tr><th>sources ({{ reference.batch_key }})</th><td>{% for k, n in reference.sources.items() %}{{ k }}: {{ "{:,}".format(n) }}{% if not loop.last %}<br>{% endif %}{% endfor %}</td></tr>{% endif %}
</table>
</div>
<div>
<h3>Query</h3>
<table>
 <tr><th>file</th><td>{{ query_name }}</td></tr>
 <tr><th>cells</th><td class="num">{{ "{:,}".format(query.cells) }}</td></tr>
 <tr><th>genes</th><td class="num">{{ "{:,}".format(query.genes) }}</td></tr>
 {% if query.sources %}<tr><th>sources ({{ query.source_key }})</th><td>{% for k, n in query.sources.items() %}{{ k }}: {{ "{:,}".format(n) }}{% if not loop.last %}<br>{% endif %}{% endfor %}</td></tr>{% endif %}
</table>
</div>
</div>
</section>

<section id="genes">
<h2>Gene overlap</h2>
{% if overlap %}
<table>
 <tr><th>reference genes found in the query</th><td class="num">{{ "{:,}".format(overlap.n_shared) }} of {{ "{:,}".format(overlap.n_vocab) }} ({{ "%.1f"|format(100 * overlap.overlap) }}%)</td></tr>
 <tr><th>query genes</th><td class="num">{{ "{:,}".format(overlap.n_dataset) }}</td></tr>
 <tr><th>query genes not in the reference (dropped)</th><td class="num">{{ "{:,}".format(overlap.n_dataset - overlap.n_shared) }}</td></tr>
</table>
{% if not overlap.recorded %}<p class="note">Counted here from gene names; the file does not record the overlap used by the mapping.</p>{% endif %}
{% if overlap.overlap < 0.8 %}<p class="warn">Less than 80% of the reference genes are in the query: missing genes count as not expressed, which can bias the mapping. Check that gene names are of the same kind (symbols vs Ensembl ids, species).</p>{% endif %}
{% else %}<p class="note">No gene overlap information.</p>{% endif %}
</section>

{% for f in placement_figures %}{% if loop.first %}<section id="placement">
<h2>The query on the reference</h2>
{% if coords_note %}<p class="note">{{ coords_note }}</p>{% endif %}
<div class="grid">{% endif %}
<figure{% if f.wide %} class="wide"{% endif %}><img src="data:image/png;base64,{{ f.png }}" alt="{{ f.title }}"><figcaption><b>{{ f.title }}.</b> {{ f.caption }}</figcaption></figure>
{% if loop.last %}</div></section>{% endif %}{% endfor %}

{% for key, s in labels.items() %}
<section id="labels-{{ loop.index }}">
<h2>Label transfer: {{ key }}</h2>
<p>{{ "{:,}".format(s.summary.cells) }} cells; {{ "{:,}".format(s.summary.unknown) }} ({{ "%.1f"|format(100 * s.summary.unknown_fraction) }}%) called unknown{% if s.summary.threshold is not none %} (confidence below {{ "%.2f"|format(s.summary.threshold) }}){% endif %}{% if s.summary.median_confidence is not none %}; median confidence {{ "%.2f"|format(s.summary.median_confidence) }}{% endif %}.
{% if s.summary.scores %}Against the given labels <code>{{ s.summary.given_key }}</code> ({{ "{:,}".format(s.summary.labeled_cells) }} cells): accuracy {{ "%.3f"|format(s.summary.scores.accuracy) }}, macro F1 {{ "%.3f"|format(s.summary.scores.macro_f1) }}, median F1 {{ "%.3f"|format(s.summary.scores.median_f1) }}{% if s.summary.accuracy_of_known is not none %}; accuracy of the cells not called unknown {{ "%.3f"|format(s.summary.accuracy_of_known) }}{% endif %}.{% endif %}</p>
<h3>Predicted labels</h3>
{{ s.table_html }}
{% if s.unknown_given %}<h3>Unknown cells</h3><p>Given labels of the {{ s.summary.unknown }} cells called unknown:</p>
<table><tr><th>given label</th><th>cells</th></tr>{% for k, n in s.unknown_given.items() %}<tr><td>{{ k }}</td><td class="num">{{ n }}</td></tr>{% endfor %}</table>{% endif %}
<div class="grid">
{% for f in s.figures %}<figure{% if f.wide %} class="wide"{% endif %}><img src="data:image/png;base64,{{ f.png }}" alt="{{ f.title }}"><figcaption><b>{{ f.title }}.</b> {{ f.caption }}</figcaption></figure>
{% endfor %}</div>
</section>
{% endfor %}

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

<section id="run">
<h2>Timings, parameters and versions</h2>
<div class="grid">
<div><h3>Timings</h3><table>{% for k, v in timings.items() %}<tr><th>{{ k }}</th><td class="num">{{ "%.2f"|format(v) }} s</td></tr>{% endfor %}</table></div>
<div><h3>Mapping parameters</h3>{% if parameters %}<table>{% for k, v in parameters.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>{% else %}<p class="note">The file records no mapping parameters (<code>uns['scconcerto_mapping']</code>).</p>{% endif %}</div>
<div><h3>Versions</h3><table>{% for k, v in versions.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table></div>
</div>
</section>
</main>
</body>
</html>
"""
