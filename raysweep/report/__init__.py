"""What a person reads after a sweep: the self-contained HTML report (:mod:`.html`). It sits
above the sweep, whose front, labels and MLflow links it renders; nothing below imports it."""
