import CssBaseline from '@mui/material/CssBaseline';
import { createTheme, ThemeProvider } from '@mui/material/styles';
import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { Provider } from 'react-redux';

import App from './App';
import { makeStore } from './store';

const theme = createTheme({
  palette: { mode: 'light', primary: { main: '#1565c0' }, secondary: { main: '#6a1b9a' } },
  typography: { h1: { fontSize: '1.6rem', fontWeight: 500 }, h2: { fontSize: '1.2rem', fontWeight: 500 } },
});

const root = document.getElementById('root');
if (!root) throw new Error('index.html has no #root element');

createRoot(root).render(
  <StrictMode>
    <Provider store={makeStore(window.location.pathname)}>
      <ThemeProvider theme={theme}>
        <CssBaseline />
        <App />
      </ThemeProvider>
    </Provider>
  </StrictMode>,
);
