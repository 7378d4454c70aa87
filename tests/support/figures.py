"""``drawn_figures``: the matplotlib Figures the report draws, kept by stem while they are still saved as usual."""

from __future__ import annotations


def drawn_figures(monkeypatch) -> dict:
    """From now on (until ``monkeypatch`` undoes it) every figure the report saves is also kept here: stem -> Figure."""
    from prompt_ot.report import plots

    drawn: dict = {}
    save = plots._save

    def keep(fig, out, stem):
        drawn[stem] = fig
        return save(fig, out, stem)

    monkeypatch.setattr(plots, "_save", keep)
    return drawn
