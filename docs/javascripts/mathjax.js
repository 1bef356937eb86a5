// MathJax settings. Docs pages and docstrings go through pymdownx.arithmatex (generic), which writes
// \( \) and \[ \]; the notebooks' Markdown cells keep Jupyter's $ and $$. Both are typeset; code
// blocks are skipped (MathJax's default).
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
  },
};
document$.subscribe(() => {
  MathJax.startup.output.clearCache();
  MathJax.typesetClear();
  MathJax.texReset();
  MathJax.typesetPromise();
});
