"""The task layer: the import/export pipeline run by workers, and the
maintenance (cleanup) that finishes or undoes what a killed process left."""
