"""Running the stages together: `crmflow migrate` and `crmflow bench`."""
