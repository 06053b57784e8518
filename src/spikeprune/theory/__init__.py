"""The LTH-SNN theory as measurements: firing statistics and spike-flip bounds, the strong-LTH construction, criterion validity."""
