"""The local Files API server (`gemfs serve`): wire protocol in `app`, state in `store`."""
