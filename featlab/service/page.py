"""The page ``featlab serve`` answers at ``/``: drop or pick images, read each verdict. No external assets."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>featlab</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:56rem;padding:0 1rem;color:#222}
#drop{border:2px dashed #888;border-radius:8px;padding:2.5rem;text-align:center;cursor:pointer}
#drop.over{background:#eef}
.card{display:flex;gap:1rem;align-items:center;border-bottom:1px solid #ddd;padding:.6rem 0}
.card img{width:96px;height:96px;object-fit:cover;border-radius:4px}
ol.faces{margin:.3rem 0 0 1rem;padding:0;font-size:90%}
.fake{color:#b00;font-weight:600}.real{color:#060;font-weight:600}.err{color:#a60}
small{color:#666}
</style></head><body>
<h1>featlab</h1>
<p>Drop face photos here (or click to pick them). Each is scored by <b id="model">the default model</b>,
with a heatmap of what made it decide; nothing leaves this machine's service.</p>
<label>model <select id="models"></select></label>
<label><input type="checkbox" id="faces"> score every face (a model trained on faces always does)</label>
<div id="drop" tabindex="0">drop images here, or click</div>
<input id="pick" type="file" accept="image/*,video/*" multiple hidden>
<div id="out"></div>
<script>
const drop = document.getElementById('drop'), pick = document.getElementById('pick'), out = document.getElementById('out');
const select = document.getElementById('models');
fetch('v1/models').then(r => r.json()).then(j => {
  for (const m of j.models) { const o = document.createElement('option'); o.value = m.name;
    o.textContent = m.name + ' (' + m.kind + ')'; select.appendChild(o); }
  document.getElementById('model').textContent = select.value;
});
select.onchange = () => { document.getElementById('model').textContent = select.value; };
drop.onclick = () => pick.click();
drop.ondragover = e => { e.preventDefault(); drop.classList.add('over'); };
drop.ondragleave = () => drop.classList.remove('over');
drop.ondrop = e => { e.preventDefault(); drop.classList.remove('over'); send(e.dataTransfer.files); };
pick.onchange = () => send(pick.files);
function explain(files, name, card) {
  const file = Array.from(files).find(f => f.name === name); if (!file) return;
  const form = new FormData(); form.append('file', file, file.name);
  if (select.value) form.append('model', select.value);
  fetch('v1/explain', {method: 'POST', body: form}).then(r => r.ok ? r.blob() : null).then(b => {
    if (!b) return; const heat = document.createElement('img'); heat.className = 'heatmap';
    heat.alt = 'heatmap of ' + name; heat.src = URL.createObjectURL(b); card.appendChild(heat);
  });
}
function send(files) {
  const form = new FormData();
  for (const f of files) form.append('file', f, f.name);
  if (select.value) form.append('model', select.value);
  if (document.getElementById('faces').checked) form.append('faces', 'detect');
  const previews = {}; for (const f of files) previews[f.name] = URL.createObjectURL(f);
  fetch('v1/score', {method: 'POST', body: form}).then(r => r.json()).then(j => {
    for (const r of (j.results || [])) {
      const card = document.createElement('div'); card.className = 'card';
      const img = document.createElement('img'); img.src = previews[r.file] || ''; img.alt = r.file; card.appendChild(img);
      const text = document.createElement('div');
      if (r.error) { text.innerHTML = '<span class="err">not scored</span> <small></small>'; text.querySelector('small').textContent = r.file + ': ' + r.error; }
      else { text.innerHTML = '<span class="verdict ' + r.verdict + '">' + r.verdict + '</span> score <b class="score"></b> '
             + '<small></small>'; text.querySelector('.score').textContent = r.score.toFixed(4);
             text.querySelector('small').textContent = r.file + ' · ' + r.score_kind + ', fake at >= ' + r.threshold + ' · ' + r.model; }
      const parts = r.faces || (r.video ? r.video.tracks.map(t => Object.assign({}, t, {box: null})) : []);
      if (parts.length) {
        const list = document.createElement('ol'); list.className = 'faces';
        for (const f of parts) { const li = document.createElement('li');
          li.textContent = (r.video ? 'track ' + f.track + ' (' + f.frames + ' frames)' : 'face at ' + f.box.map(Math.round).join(','))
            + ': ' + (f.verdict || f.label) + ' ' + f.score.toFixed(4); list.appendChild(li); }
        text.appendChild(list);
      }
      card.appendChild(text); out.prepend(card);
      if (!r.error && !r.video) explain(files, r.file, card);
    }
    if (!j.results && j.error) { const p = document.createElement('p'); p.className = 'err'; p.textContent = j.error; out.prepend(p); }
  });
}
</script></body></html>
"""
