import Alert from '@mui/material/Alert';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import FormControl from '@mui/material/FormControl';
import FormControlLabel from '@mui/material/FormControlLabel';
import FormLabel from '@mui/material/FormLabel';
import Paper from '@mui/material/Paper';
import Radio from '@mui/material/Radio';
import RadioGroup from '@mui/material/RadioGroup';
import TextField from '@mui/material/TextField';
import Typography from '@mui/material/Typography';
import { type FormEvent, useState } from 'react';

import type { GrantType } from '../api';
import { useAppDispatch, useAppSelector } from '../hooks';
import { signIn } from '../store/auth';

/** The sign-in form: a token from the API's OAuth2 endpoint (password or client credentials). */
export default function LoginPage() {
  const dispatch = useAppDispatch();
  const { status, error, notice } = useAppSelector((s) => s.auth);
  const [grant, setGrant] = useState<GrantType>('password');
  const [name, setName] = useState('');
  const [secret, setSecret] = useState('');

  const submit = (event: FormEvent) => {
    event.preventDefault();
    if (name && secret) void dispatch(signIn({ grant, name, secret }));
  };

  const person = grant === 'password';
  return (
    <Box component="main" sx={{ display: 'flex', justifyContent: 'center', p: 2, minHeight: '100vh', alignItems: 'flex-start' }}>
      <Paper component="section" sx={{ p: 3, mt: { xs: 2, sm: 8 }, width: '100%', maxWidth: 420 }} aria-labelledby="sign-in-title">
        <Typography variant="h1" id="sign-in-title" gutterBottom>
          Churn dashboard
        </Typography>
        <Typography variant="body2" sx={{ mb: 2 }}>
          Sign in with an account that holds the viewer role.
        </Typography>
        {notice && (
          <Alert severity="info" sx={{ mb: 2 }}>
            {notice}
          </Alert>
        )}
        {error && (
          <Alert severity="error" sx={{ mb: 2 }} role="alert" data-testid="sign-in-error">
            {error}
          </Alert>
        )}
        <Box component="form" onSubmit={submit} noValidate aria-label="Sign in">
          <FormControl sx={{ mb: 1 }}>
            <FormLabel id="grant-label">Sign in as</FormLabel>
            <RadioGroup
              row
              aria-labelledby="grant-label"
              name="grant"
              value={grant}
              onChange={(e) => setGrant(e.target.value as GrantType)}
            >
              <FormControlLabel value="password" control={<Radio />} label="Person" />
              <FormControlLabel value="client_credentials" control={<Radio />} label="API client" />
            </RadioGroup>
          </FormControl>
          <TextField
            id="username"
            name="username"
            label={person ? 'Username' : 'Client id'}
            autoComplete="username"
            value={name}
            onChange={(e) => setName(e.target.value)}
            fullWidth
            required
            margin="normal"
            autoFocus
          />
          <TextField
            id="password"
            name="password"
            type="password"
            label={person ? 'Password' : 'Client secret'}
            autoComplete="current-password"
            value={secret}
            onChange={(e) => setSecret(e.target.value)}
            fullWidth
            required
            margin="normal"
          />
          <Button
            type="submit"
            variant="contained"
            fullWidth
            sx={{ mt: 2 }}
            disabled={status === 'signing-in' || !name || !secret}
          >
            {status === 'signing-in' ? 'Signing in…' : 'Sign in'}
          </Button>
        </Box>
      </Paper>
    </Box>
  );
}
