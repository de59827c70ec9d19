import AppBar from '@mui/material/AppBar';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import Container from '@mui/material/Container';
import Link from '@mui/material/Link';
import Toolbar from '@mui/material/Toolbar';
import Typography from '@mui/material/Typography';
import { useEffect } from 'react';

import { useAppDispatch, useAppSelector, useNavigate } from './hooks';
import CustomerPage from './pages/CustomerPage';
import CustomersPage from './pages/CustomersPage';
import DriftPage from './pages/DriftPage';
import ImportancePage from './pages/ImportancePage';
import LivePage from './pages/LivePage';
import LoginPage from './pages/LoginPage';
import ModelPage from './pages/ModelPage';
import { signedOut } from './store/auth';
import { navigated, PAGE_TITLES, type PageName, parseRoute, type Route, routePath } from './store/nav';

const NAV: PageName[] = ['customers', 'model', 'importance', 'drift', 'live'];

function Page({ route }: { route: Route }) {
  switch (route.page) {
    case 'customer':
      return <CustomerPage id={route.id} />;
    case 'model':
      return <ModelPage />;
    case 'importance':
      return <ImportancePage />;
    case 'drift':
      return <DriftPage />;
    case 'live':
      return <LivePage />;
    default:
      return <CustomersPage />;
  }
}

export default function App() {
  const dispatch = useAppDispatch();
  const navigate = useNavigate();
  const session = useAppSelector((s) => s.auth.session);
  const route = useAppSelector((s) => s.nav.route);

  // Back and forward buttons: the URL changed, the store follows.
  useEffect(() => {
    const onPop = () => dispatch(navigated(parseRoute(window.location.pathname)));
    window.addEventListener('popstate', onPop);
    return () => window.removeEventListener('popstate', onPop);
  }, [dispatch]);

  useEffect(() => {
    const title = route.page === 'customer' ? `Customer ${route.id}` : PAGE_TITLES[route.page];
    document.title = `${session ? title : 'Sign in'} · Churn dashboard`;
  }, [route, session]);

  if (!session) return <LoginPage />;

  const current: PageName = route.page === 'customer' ? 'customers' : route.page;
  return (
    <>
      <Link
        href="#main"
        sx={{
          position: 'absolute',
          left: -9999,
          zIndex: 2000,
          p: 1,
          bgcolor: 'background.paper',
          '&:focus': { left: 8, top: 8 },
        }}
      >
        Skip to content
      </Link>
      <AppBar position="static" component="header" color="primary">
        <Toolbar sx={{ flexWrap: 'wrap', gap: 1, py: 0.5 }}>
          <Typography variant="h6" component="p" sx={{ flexGrow: 1 }}>
            Churn dashboard
          </Typography>
          <Typography variant="body2" component="p" sx={{ display: { xs: 'none', sm: 'block' } }}>
            {session.subject} ({session.roles.join(', ')})
          </Typography>
          <Button color="inherit" variant="outlined" size="small" onClick={() => dispatch(signedOut())}>
            Sign out
          </Button>
        </Toolbar>
        <Box
          component="nav"
          aria-label="Dashboard pages"
          sx={{ display: 'flex', flexWrap: 'wrap', gap: 0.5, px: 1, pb: 1 }}
        >
          {NAV.map((page) => (
            <Button
              key={page}
              href={routePath({ page } as Route)}
              color="inherit"
              size="small"
              aria-current={current === page ? 'page' : undefined}
              sx={{
                textTransform: 'none',
                borderBottom: current === page ? '2px solid currentColor' : '2px solid transparent',
                borderRadius: 0,
              }}
              onClick={(event: React.MouseEvent) => {
                event.preventDefault();
                navigate({ page } as Route);
              }}
            >
              {PAGE_TITLES[page]}
            </Button>
          ))}
        </Box>
      </AppBar>
      <Container component="main" id="main" tabIndex={-1} maxWidth="lg" sx={{ py: 2, outline: 'none' }}>
        <Page route={route} />
      </Container>
    </>
  );
}
