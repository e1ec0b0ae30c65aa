"""Evidence for the migration engineer: assess the sources before a run, validate the target after one, roll a
run back, and decide the cutover."""
